"""Stage 1 of CaP training: supervised fine-tuning with trl's SFTTrainer and a LoRA adapter.

Rows are (CaP prompt of question + draft) -> correct program; the loss is on the program only
(trl's prompt-completion format with `completion_only_loss`), so the model learns to write the
fix, not to reproduce prompts.
"""

from __future__ import annotations

from cap_app.train.common import answer_text, callbacks, load_base, lora_config, prompt_text, read_rows, run
from cap_app.train.config import CapSFTConfig


def train_sft(cfg: CapSFTConfig) -> dict:
    """Train (or resume) the SFT adapter; returns a summary (final adapter in output_dir/final)."""
    from datasets import Dataset
    from trl import SFTTrainer

    rows = read_rows(cfg.data, cfg.max_rows, required=("prompt", "completion"))
    model, tokenizer = load_base(cfg.model)
    dataset = Dataset.from_list(
        [{"prompt": prompt_text(tokenizer, row), "completion": answer_text(row["completion"])} for row in rows])
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(cfg, model), callbacks=callbacks(cfg, "CaP SFT", ("loss",)))
    return run(trainer, cfg, rows=len(rows), stage="sft")
