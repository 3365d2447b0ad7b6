"""Where the repository's own files are, for the tests that read its GSM8K rows or start its programs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "data" / "gsm8k" / "train.jsonl"
DRAFTS_DEV = ROOT / "data" / "gsm8k" / "model_drafts_dev.jsonl"
