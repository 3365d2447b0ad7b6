"""Write a CaP model (a GGUF base with a PEFT adapter merged in) as a GGUF file that llama.cpp,
Ollama and LM Studio load.

The base's own GGUF is the template: its metadata (architecture settings, tokenizer, chat
template) is copied as it is, and its tensors are replaced by the merged model's under the same
llama.cpp names, so nothing of the tokenizer has to be rebuilt. Weights are written as f16, q8_0
or q4_0 (numpy quantisers of the `gguf` package); norms stay f32, and the token embedding, which
small models tie to the output layer, stays q8_0 in a 4-bit file (as llama.cpp's own 4-bit types
do). transformers un-permutes the q/k projections of llama models when it reads a GGUF; they are
permuted back here as llama.cpp's convert_hf_to_gguf.py does. Only the llama architecture (the
SmolLM2 family, Llama) is handled.

The offline default is exported once per (base, adapter, type) and cached, so the llama.cpp
backend starts from a file (`cached_export`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from pathlib import Path

from cap_app.models.loading import NO_ADAPTER, cache_dir
from cap_app.models.progress import report

TYPES = ("f16", "q8_0", "q4_0")
ARCHITECTURES = ("llama",)


@dataclasses.dataclass
class GGUFExportConfig:
    output: str = dataclasses.field(default="", metadata={"help": "the .gguf file to write"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "the base model as a .gguf file; default: the offline SmolLM2-135M-Instruct"}
    )
    adapter: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "PEFT adapter folder to merge in; 'none' for the base alone; default: this project's "
            "CaP adapter when the offline default model is used"
        },
    )
    type: str = dataclasses.field(
        default="q8_0",
        metadata={
            "help": "weight type: f16 (exact up to rounding), q8_0 (near-exact, half the size), q4_0 (smallest)",
            "choices": TYPES,
        },
    )


class ExportError(Exception):
    """The model cannot be exported; the message is one line for the user."""


def export_gguf(base_gguf: Path, adapter: str | None, output: Path, weight_type: str) -> Path:
    """Merge `adapter` (or nothing) into the model of `base_gguf` and write it to `output`."""
    import gguf

    if weight_type not in TYPES:
        raise ExportError(f"unknown type '{weight_type}'; choose one of {', '.join(TYPES)}")
    reader = gguf.GGUFReader(base_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch not in ARCHITECTURES:
        raise ExportError(f"exporting a '{arch}' model is not supported (only: {', '.join(ARCHITECTURES)})")
    tensors = _lora_merged_tensors(reader, adapter) if adapter else None
    if tensors is None:
        tensors = _merged_tensors(base_gguf, adapter, reader)
    report(f"writing the model as a {weight_type} GGUF file for llama.cpp (once per model cache)")
    staging = output.with_name(f"{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer = gguf.GGUFWriter(staging, arch)
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        writer.add_file_type(
            {
                "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
            }[weight_type]
        )
        for name, array in tensors.items():
            qtype = _tensor_type(name, array, weight_type)
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                writer.add_tensor(
                    name, array.astype("float32" if qtype == gguf.GGMLQuantizationType.F32 else "float16")
                )
            else:
                writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def _tensor_type(name: str, array, weight_type: str):
    from gguf import GGMLQuantizationType as Q

    if array.ndim == 1:
        return Q.F32
    if weight_type == "f16" or array.shape[-1] % 32:  # q8_0 and q4_0 quantise rows in blocks of 32
        return Q.F16
    if weight_type == "q4_0" and name != "token_embd.weight":
        return Q.Q4_0
    return Q.Q8_0


def _merged_tensors(base_gguf: Path, adapter: str | None, reader) -> dict:
    """The merged model's weights as float32 numpy arrays under the base GGUF's tensor names."""
    import gguf
    import torch

    from cap_app.models.loading import ModelConfig, load_model

    loaded = load_model(
        ModelConfig(
            model=str(base_gguf), adapter=adapter or NO_ADAPTER, device="cpu", quantization="none", dtype="float32"
        )
    )
    config = loaded.model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    wanted = {tensor.name for tensor in reader.tensors}
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tensors = {}
    with torch.no_grad():
        for hf_name, weight in loaded.model.state_dict().items():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name not in wanted:  # e.g. lm_head, tied to the embedding and absent from the base file
                continue
            array = weight.float().numpy()
            if hf_name.endswith("q_proj.weight"):
                array = _permute(array, heads, heads)
            elif hf_name.endswith("k_proj.weight"):
                array = _permute(array, heads, kv_heads)
            tensors[name] = array
    missing = wanted - tensors.keys()
    if missing:
        raise ExportError(f"the merged model lacks {len(missing)} tensors of the base GGUF, e.g. {sorted(missing)[0]}")
    return {tensor.name: tensors[tensor.name] for tensor in reader.tensors}  # the base file's order


def _plain_lora(adapter: str) -> float | None:
    """The scaling of a plain LoRA adapter (the one kind merged here without transformers), else None."""
    import json

    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    plain = (
        config.get("peft_type") == "LORA"
        and not config.get("use_dora")
        and not config.get("fan_in_fan_out")
        and not config.get("modules_to_save")
        and not config.get("rank_pattern")
        and not config.get("alpha_pattern")
        and config.get("bias", "none") == "none"
        and not config.get("lora_bias")
        and (Path(adapter) / "adapter_model.safetensors").is_file()
    )
    if not plain:
        return None
    rank, alpha = config["r"], config["lora_alpha"]
    return alpha / rank**0.5 if config.get("use_rslora") else alpha / rank


def _lora_merged_tensors(reader, adapter: str) -> dict | None:
    """The base GGUF's weights with a plain LoRA adapter merged in, computed from the file itself: each
    tensor de-quantised by the `gguf` package as transformers does it, and `B @ A * scaling` added in
    float32 with torch as PEFT's merge adds it (permuted to llama.cpp's q/k layout). Seconds, where
    loading the GGUF into transformers first takes about 30 (cap_app/backends/preparation.py: the first visitor of a
    fresh Space waits for this). None when the adapter is not plain LoRA or names a weight the base
    lacks: `_merged_tensors` then merges through transformers."""
    scaling = _plain_lora(adapter)
    if scaling is None:
        return None
    report(f"merging the adapter {Path(adapter).name} into the bundled GGUF model (once per model cache)")
    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    arch = reader.fields["general.architecture"].contents()
    layers = reader.fields[f"{arch}.block_count"].contents()
    heads = reader.fields[f"{arch}.attention.head_count"].contents()
    kv_heads = reader.fields[f"{arch}.attention.head_count_kv"].contents()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    tensors = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32) for t in reader.tensors}
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    with torch.no_grad():
        for key in sorted(k for k in weights if k.endswith(".lora_A.weight")):
            hf_name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            b_key = key.replace(".lora_A.", ".lora_B.")
            if name not in tensors or b_key not in weights:
                return None
            delta = (weights[b_key].float() @ weights[key].float()) * scaling
            if hf_name.endswith("q_proj.weight"):
                delta = torch.from_numpy(_permute(delta.numpy(), heads, heads))
            elif hf_name.endswith("k_proj.weight"):
                delta = torch.from_numpy(_permute(delta.numpy(), heads, kv_heads))
            merged = torch.from_numpy(tensors[name].copy())
            if merged.shape != delta.shape:
                return None
            merged += delta
            tensors[name] = merged.numpy()
    return tensors


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's rotary layout of a q or k projection (convert_hf_to_gguf.py's LlamaModel.permute)."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def cached_export(base_gguf: Path, adapter: str, weight_type: str = "q8_0") -> Path:
    """The merged GGUF of `base_gguf` + `adapter`, exported on first use and cached by the contents
    of both, so a new adapter or base makes a new file and the old ones of that pair are removed."""
    key = hashlib.sha256()
    for file in [base_gguf, *sorted(p for p in Path(adapter).iterdir() if p.name.startswith("adapter_"))]:
        with open(file, "rb") as handle:
            key.update(file.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    prefix = f"{base_gguf.stem}-{Path(adapter).name}-{weight_type}-"
    target = cache_dir() / "gguf-export" / f"{prefix}{key.hexdigest()[:16]}.gguf"
    if not target.exists():
        export_gguf(base_gguf, adapter, target, weight_type)
        for stale in target.parent.glob(f"{prefix}*.gguf"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target
