"""What SFT and DPO share: the base model, LoRA, the rows as trl text, resuming, the final adapter.

The rows on disk are conversational (docs/data_formats.md); for training their prompt is
re-rendered with `cap_app.engine.prompts.format_prompt` and the model's own tokenizer, so training
sees exactly the text that inference (refine.py) sends.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from cap_app.engine.prompts import format_prompt
from cap_app.models.loading import NO_ADAPTER, ModelConfig, adapter_or_none, load_model

FINAL_DIR = "final"


class TrainingError(Exception):
    """Training cannot start (bad data, bad option); the message is one line for the user."""


def load_base(model_name: str | None, dtype: str = "auto"):
    """The base model and tokenizer through the engine's loader (4-bit NF4 on CUDA = QLoRA), in a
    process that keeps freed memory for the training steps to come."""
    from peft import prepare_model_for_kbit_training

    keep_freed_memory()
    loaded = load_model(ModelConfig(model=model_name, adapter=NO_ADAPTER, dtype=training_dtype(dtype)))
    model = loaded.model
    if loaded.quantization in ("4bit", "8bit"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, loaded.tokenizer


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory instead of returning it to the OS after every tensor: a
    training step allocates and frees hundreds of MB of activations, and mapping them afresh
    each time (page faults, zeroing) cost ~15% of a CPU step here. No-op off glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 1 << 25)  # tensors up to 32 MB (glibc's maximum) from the heap
    mallopt(m_trim_threshold, 1 << 62)  # never shrink the heap
    mallopt(m_top_pad, 1 << 28)


def training_dtype(dtype: str) -> str:
    """`auto`: bfloat16 where the hardware computes in it natively, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lora_config(cfg, model):
    """LoRA as cfg says; with lora_layers, "all-linear" is spelled out (peft needs module names then)."""
    import torch
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    layers = None
    if cfg.lora_layers:
        try:
            first, _, last = cfg.lora_layers.partition("-")
            layers = list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise TrainingError(f"lora_layers must look like '18-29', not {cfg.lora_layers!r}") from None
        if targets == "all-linear":
            targets = sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and ".layers." in name
                }
            )
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def adapted(model, cfg, adapter: str | None, role: str):
    """The model with `adapter` loaded to train further (peft keeps its LoRA shape and casts its
    weights to float32), else a fresh LoRA as cfg says; returns (model, peft_config for trl)."""
    if adapter_or_none(adapter) is None:
        return model, lora_config(cfg, model)
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True), None
    except (OSError, ValueError) as error:
        raise TrainingError(f"{role} {adapter!r} could not be loaded: {str(error).splitlines()[0]}") from None


def read_rows(path: str, max_rows: int | None, required: tuple[str, ...]) -> list[dict]:
    """The JSONL rows, checked for the keys this stage needs."""
    if not Path(path).is_file():
        raise TrainingError(f"no data file at {path}; build it with `python -m cap_app data build`")
    rows = []
    with open(path) as handle:
        for n, line in enumerate(handle, 1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise TrainingError(f"{path}:{n}: not valid JSON") from None
            missing = [key for key in (*required, "meta") if key not in row]
            if missing or not {"question", "draft"} <= set(row["meta"]):
                raise TrainingError(f"{path}:{n}: missing {', '.join(missing) or 'meta.question/meta.draft'}")
            rows.append(row)
    if not rows:
        raise TrainingError(f"{path} has no rows")
    return rows


def prompt_text(tokenizer, row: dict) -> str:
    """The row's CaP prompt exactly as inference renders it for this tokenizer."""
    return format_prompt(tokenizer, row["meta"]["question"], row["meta"]["draft"])


def answer_text(message_list: list[dict]) -> str:
    """The assistant content of a conversational completion (a fenced program)."""
    return message_list[-1]["content"]


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def callbacks(cfg, title: str, metrics: tuple[str, ...]) -> list:
    """Loss-curve HTML on every save and at the end; an optional wall-clock limit."""
    from transformers import TrainerCallback

    from cap_app.train.curves import write_loss_html

    html = Path(cfg.output_dir) / "loss.html"

    class LossCurve(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            write_loss_html(state.log_history, html, title=title, metrics=metrics)

        on_train_end = on_save

    class TimeLimit(TrainerCallback):
        def __init__(self, minutes: float):
            self.deadline = time.monotonic() + minutes * 60

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > self.deadline:
                control.should_save = True
                control.should_training_stop = True

    found = [LossCurve()]
    if cfg.stop_after_minutes:
        found.append(TimeLimit(cfg.stop_after_minutes))
    return found


def run(trainer_class, cfg, model, tokenizer, peft_config, dataset, *, stage: str, metrics=("loss",)) -> dict:
    """Build the stage's trl trainer (the same way for SFT and DPO, so both get the loss curve and
    time limit of `callbacks`), train (resuming when asked), then save final/ if the run reached its
    last step."""
    rows = len(dataset)
    trainer = trainer_class(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks(cfg, f"CaP {stage.upper()}", metrics),
    )
    checkpoint = last_checkpoint(cfg.output_dir) if cfg.resume else None
    started = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    summary = {
        "stage": stage,
        "base_model": cfg.model or "SmolLM2-135M-Instruct (offline default)",
        "data": cfg.data,
        "rows": rows,
        "steps": state.global_step,
        "max_steps": state.max_steps,
        "resumed_from": checkpoint,
        "seconds_this_run": round(time.time() - started, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "hardware": _hardware(),
        "finished": state.global_step >= state.max_steps,
    }
    if summary["finished"]:
        save_final(trainer, Path(cfg.output_dir) / FINAL_DIR, summary)
    return summary


def save_final(trainer, folder: Path, summary: dict) -> None:
    """The trained adapter alone (no DPO reference copy), in float16 to keep it a few MB."""
    folder.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(folder, selected_adapters=["default"])
    weights = folder / "adapter_model.safetensors"
    _write_float16(weights, weights)
    (folder / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def ship_adapter(checkpoint: str, target: str, *, base: str) -> Path:
    """Copy a checkpoint's LoRA adapter to `target` as float16 (a few MB, fit to commit) with
    `base` as its base model; the model card and other files in `target` are kept."""
    source = Path(checkpoint)
    weights, config = source / "adapter_model.safetensors", source / "adapter_config.json"
    if not (weights.is_file() and config.is_file()):
        raise TrainingError(f"{source} holds no adapter (adapter_model.safetensors + adapter_config.json)")
    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    settings = json.loads(config.read_text())
    settings.update(base_model_name_or_path=base, inference_mode=True)
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    _write_float16(weights, folder / "adapter_model.safetensors")
    return folder


def _write_float16(source: Path, target: Path) -> None:
    """LoRA weights in float16: half the size, and the adapter is merged or added in float32 anyway."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(source).items()}
    save_file(tensors, target, metadata={"format": "pt"})


def _hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    )
