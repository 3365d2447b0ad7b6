"""CaP training data from GSM8K train: programs from calculator annotations, corrupted drafts,
SFT and preference rows, every label verified in the sandbox (formats: docs/data_formats.md)."""
