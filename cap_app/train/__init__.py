"""CaP training: SFT then DPO with trl and LoRA (configs in config.py, shared steps in common.py)."""
