"""Stage 1 of CaP training: supervised fine-tuning with trl's SFTTrainer and a LoRA adapter.

Rows are (CaP prompt of question + draft) -> correct program; the loss is on the program only
(trl's prompt-completion format with `completion_only_loss`), so the model learns to write the
fix, not to reproduce prompts.
"""

from __future__ import annotations

from cap_app.train.common import adapted, answer_text, load_base, prompt_text, read_rows, run
from cap_app.train.config import CapSFTConfig


def completion_loss(model, inputs: dict, num_items_in_batch=None):
    """Mean next-token cross-entropy on the completion only, projecting through the LM head only
    the positions that have a label: the vocabulary projection (49,152 logits per position on
    SmolLM2) is the largest single cost of a small model's step, and trl's own fused head also
    computes entropy and accuracy for its logs, which a CPU run cannot spare."""
    import torch.nn.functional as F

    backbone = model.get_base_model().model
    hidden = backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    targets = inputs["labels"][:, 1:]
    mask = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])
    total = F.cross_entropy(logits.float(), targets[mask], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
    return total / max(int(count), 1)


def train_sft(cfg: CapSFTConfig) -> dict:
    """Train (or resume) the SFT adapter; returns a summary (final adapter in output_dir/final)."""
    from datasets import Dataset
    from trl import SFTTrainer

    class CompletionLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = completion_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

    rows = read_rows(cfg.data, cfg.max_rows, required=("prompt", "completion"))
    model, tokenizer = load_base(cfg.model, cfg.dtype)
    dataset = Dataset.from_list(
        [{"prompt": prompt_text(tokenizer, row), "completion": answer_text(row["completion"])} for row in rows]
    )
    model, peft_config = adapted(model, cfg, cfg.init_adapter, "initial adapter")
    return run(CompletionLossTrainer, cfg, model, tokenizer, peft_config, dataset, stage="sft")
