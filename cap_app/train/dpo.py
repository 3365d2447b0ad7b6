"""Stage 2 of CaP training: preference optimisation with trl's DPOTrainer, from the SFT adapter.

The SFT adapter is trained further, and trl keeps a frozen copy of it as the reference model,
so the result is still one adapter on the base model. The loss is any of trl's DPO variants
(`loss_type`), e.g. `sigmoid`, `ipo`, `robust`, or `sigmoid+sft` (DPO plus an NLL term on the
chosen program, weighted by `loss_weights`).
"""

from __future__ import annotations

from cap_app.train.common import adapted, answer_text, load_base, prompt_text, read_rows, run
from cap_app.train.config import CapDPOConfig

METRICS = ("loss", "rewards/accuracies", "rewards/margins")


def score_completions_only() -> None:
    """Make trl's fused LM head project only the completion positions on a CPU, as it does on GPUs.

    trl scores only labelled positions on Triton devices and every position elsewhere (fixed tile
    shapes for compiling backends such as Neuron). A CPU compiles nothing, and the prompt is ~85% of
    a CaP pair's positions: the 49,152-logit projection over them was 70% of a DPO step here
    (py-spy; 70 s per step of 8 pairs on one core). The kernels themselves stay trl's torch ones."""
    import trl.trainer.utils as trl_utils

    use_triton = trl_utils._use_triton
    if getattr(use_triton, "completions_only", False):
        return

    def compact_on_cpu(device):
        return device.type == "cpu" or use_triton(device)

    compact_on_cpu.completions_only = True
    trl_utils._use_triton = compact_on_cpu


def train_dpo(cfg: CapDPOConfig) -> dict:
    """Train (or resume) the DPO adapter; returns a summary (final adapter in output_dir/final)."""
    from datasets import Dataset
    from trl import DPOTrainer

    score_completions_only()
    rows = read_rows(cfg.data, cfg.max_rows, required=("prompt", "chosen", "rejected"))
    model, tokenizer = load_base(cfg.model, cfg.dtype)
    # trl trains a loaded adapter further and keeps a frozen copy of it as the reference
    model, peft_config = adapted(model, cfg, cfg.adapter, "SFT adapter")
    dataset = Dataset.from_list(
        [
            {
                "prompt": prompt_text(tokenizer, row),
                "chosen": answer_text(row["chosen"]),
                "rejected": answer_text(row["rejected"]),
            }
            for row in rows
        ]
    )
    return run(DPOTrainer, cfg, model, tokenizer, peft_config, dataset, stage="dpo", metrics=METRICS)
