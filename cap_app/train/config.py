"""Training configs: trl's SFTConfig / DPOConfig plus CaP's own fields, our defaults in one place.

Every trl / transformers option stays available (`python -m cap_app train sft --help` lists
them all); the fields below add what trl does not know (base model, data file, LoRA shape,
resume, time limit) and change the defaults that matter for a small CaP model on a laptop
CPU: LoRA instead of full fine-tuning, no gradient checkpointing, frequent checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig, SFTConfig


@dataclass
class _CapFields:
    """Fields shared by both stages, on top of what trl offers."""

    model: str | None = field(
        default=None,
        metadata={"help": "base model: Hub id, local folder or .gguf file; default: the offline SmolLM2-135M-Instruct"},
    )
    data: str = field(default="", metadata={"help": "JSONL rows from `python -m cap_app data build`"})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "base weights' precision (the LoRA weights stay float32): auto = bfloat16 where the CPU or GPU "
            "has bf16 units (~3x faster steps on a CPU with AVX512-BF16/AMX than float32 weights under "
            "autocast), else float32; or float32, bfloat16, float16"
        },
    )
    max_rows: int | None = field(default=None, metadata={"help": "train on the first N rows only"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling (alpha)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "modules that get LoRA weights: 'all-linear' or comma-separated names"}
    )
    lora_layers: str = field(
        default="",
        metadata={
            "help": "LoRA only on these decoder layers, e.g. '18-29' (the backward pass then stops at the lowest "
            "one: much cheaper on CPU); default: all layers"
        },
    )
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir (if any)"})
    stop_after_minutes: float | None = field(
        default=None,
        metadata={"help": "save a checkpoint and stop after this many minutes (resume later with --resume)"},
    )
    # trl's own options, with the defaults both stages share (dataclasses take a field's default from
    # the last class in the MRO's reverse order that defines it: these override SFTConfig's/DPOConfig's)
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs over the rows"})
    lr_scheduler_type: str = field(
        default="constant_with_warmup",
        metadata={"help": "learning-rate schedule; constant keeps chunked, resumed runs on the same schedule"},
    )
    max_length: int | None = field(default=768, metadata={"help": "truncate longer prompt+completion"})
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "trade compute for memory (off: small models fit, and it slows CPU training)"}
    )
    logging_steps: float = field(default=1, metadata={"help": "log the loss every N steps"})
    save_steps: float = field(default=10, metadata={"help": "checkpoint every N steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept"})

    def __post_init__(self):
        if self.bf16 is None:  # trl's default (bf16 on) fails on CPUs and older GPUs
            import torch

            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()


@dataclass
class CapSFTConfig(_CapFields, SFTConfig):
    """Stage 1: (CaP prompt of question + draft) -> correct program, loss on the program only."""

    data: str = field(default="runs/data/sft.jsonl", metadata={"help": "SFT rows (data build's sft.jsonl)"})
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "start from this adapter's weights and LoRA shape (e.g. cap_app/adapters/smollm2-cap, to train "
            "the shipped one further) instead of a fresh LoRA; the lora_* options are then ignored"
        },
    )
    output_dir: str = field(default="runs/sft", metadata={"help": "checkpoints, final/ adapter, loss.html"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (LoRA)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    warmup_steps: float = field(default=5, metadata={"help": "warm-up steps"})
    completion_only_loss: bool | None = field(default=True, metadata={"help": "loss on the program tokens only"})


@dataclass
class CapDPOConfig(_CapFields, DPOConfig):
    """Stage 2: prefer the correct program over a wrong one for the same prompt, from the SFT adapter."""

    data: str = field(default="runs/data/dpo.jsonl", metadata={"help": "preference rows (data build's dpo.jsonl)"})
    adapter: str | None = field(
        default="runs/sft/final",
        metadata={
            "help": "SFT adapter to start from (it is trained further; a frozen copy is the DPO reference); "
            "'none' to start a fresh adapter on the base model"
        },
    )
    output_dir: str = field(default="runs/dpo", metadata={"help": "checkpoints, final/ adapter, loss.html"})
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "DPO loss(es): sigmoid, ipo, robust, hinge, exo_pair, nca_pair, bco_pair, sppo_hard, aot, "
            "aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm; several are summed with "
            "loss_weights; 'sigmoid+sft' is shorthand for the NLL-regularised `sigmoid sft`"
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate (LoRA)"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "preference pairs per step"})
    warmup_steps: float = field(default=2, metadata={"help": "warm-up steps"})

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_type = [part for name in self.loss_type for part in name.split("+") if part]
        super().__post_init__()
