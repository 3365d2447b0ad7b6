"""Test helpers shared by several test folders (tiny models built in code, no downloads)."""
