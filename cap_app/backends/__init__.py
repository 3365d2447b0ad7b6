"""Generation backends: which engine writes the programs, chosen once per command or app.

- `transformers`: the model in this process (`cap_app.models.loading`); any Hub model or folder, 4-bit on CUDA.
- `llama.cpp`: a GGUF file in this process through llama-cpp-python; the fast path on CPUs.
- `openai`: any OpenAI-compatible `/v1` server (vLLM, SGLang, TGI, llama.cpp's server), for scale.

`auto` (the default) reads $CAP_BACKEND, else picks `openai` when a --base-url is given and
`llama.cpp` for a .gguf model on a machine without CUDA (the offline default is one) when
llama-cpp-python is installed, else `transformers`. The offline default's CaP adapter is merged
into a GGUF once for llama.cpp (`cap_app.models.gguf.cached_export`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
from pathlib import Path

from cap_app.backends.base import Backend, BackendError, Conversation

BACKENDS = ("auto", "transformers", "llama.cpp", "openai")

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendConfig",
    "BackendError",
    "Conversation",
    "as_backend",
    "get_backend",
    "resolve_backend",
]


@dataclasses.dataclass
class BackendConfig:
    backend: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "what generates: transformers (in process), llama.cpp (a .gguf in process, fast on CPU) or "
            "openai (an OpenAI-compatible server); auto = $CAP_BACKEND, else openai with --base-url, "
            "llama.cpp for a .gguf model without CUDA, else transformers",
            "choices": BACKENDS,
        },
    )
    base_url: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "openai backend: the server's URL, e.g. http://127.0.0.1:8000/v1 "
            "(the API key is read from $CAP_API_KEY)"
        },
    )
    concurrency: int = dataclasses.field(
        default=8,
        metadata={"help": "openai backend: most requests in flight at once (give --batch-size at least this)"},
    )
    request_timeout_s: float = dataclasses.field(
        default=60.0, metadata={"help": "openai backend: seconds to wait for a connection or the next streamed token"}
    )
    retries: int = dataclasses.field(
        default=4,
        metadata={"help": "openai backend: tries after a 429, 5xx, timeout or lost connection (exponential backoff)"},
    )
    contexts: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "llama.cpp backend: contexts decoding at once, each a copy of the model with up to 8,192 cells "
            "(about 350 MB for the offline default) with a shared context for the N samples of a vote (about "
            "190 MB more); unset: "
            "$CAP_LLAMA_CONTEXTS, else the CPUs / threads per context"
        },
    )

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")
        if self.concurrency < 1 or self.retries < 0 or self.request_timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and request_timeout_s > 0")
        if self.contexts is not None and self.contexts < 1:
            raise ValueError("contexts must be >= 1")


def _has_cuda() -> bool:
    """Whether an NVIDIA driver is present; read from /proc so that choosing a backend does not
    import torch (a second of a llama.cpp start)."""
    return Path("/proc/driver/nvidia/version").exists()


def resolve_backend(model_cfg, backend_cfg: BackendConfig) -> str:
    """The backend `auto` stands for, given the model asked for and this machine."""
    from cap_app.models.loading import resolve_source

    name = backend_cfg.backend
    if name == "auto":
        name = os.environ.get("CAP_BACKEND") or "auto"
        if name not in BACKENDS:
            raise BackendError(f"CAP_BACKEND='{name}' is not a backend; choose one of {', '.join(BACKENDS[1:])}")
    if name != "auto":
        return name
    if backend_cfg.base_url:
        return "openai"
    if (
        resolve_source(model_cfg).path.endswith(".gguf")
        and not _has_cuda()
        and importlib.util.find_spec("llama_cpp") is not None
    ):
        return "llama.cpp"
    return "transformers"


_cache_lock = threading.Lock()
_cached: tuple[tuple, Backend] | None = None


def get_backend(model_cfg, backend_cfg: BackendConfig | None = None) -> Backend:
    """The backend for these settings, loaded once per process and reused while they stay the same
    (like `get_model`, which holds the transformers model). Raises BackendError or ModelLoadError
    with a one-line reason; settings a backend cannot honour are refused, not ignored."""
    global _cached
    backend_cfg = backend_cfg or BackendConfig()
    name = resolve_backend(model_cfg, backend_cfg)
    if name == "transformers":
        from cap_app.backends.transformers import TransformersBackend
        from cap_app.models.loading import get_model

        _refuse_openai_options(backend_cfg, name)
        _refuse_llama_cpp_options(backend_cfg, name)
        return TransformersBackend(get_model(model_cfg))
    key = (name, dataclasses.astuple(model_cfg), dataclasses.astuple(backend_cfg), os.environ.get("CAP_API_KEY"))
    with _cache_lock:
        if _cached is None or _cached[0] != key:
            _cached = None  # one model in memory at a time
            _cached = (key, _load(name, model_cfg, backend_cfg))
        return _cached[1]


def _load(name: str, model_cfg, backend_cfg: BackendConfig) -> Backend:
    _refuse_transformers_options(model_cfg, name)
    if name == "llama.cpp":
        _refuse_openai_options(backend_cfg, name)
        return _llama_cpp_backend(model_cfg, backend_cfg.contexts)
    from cap_app.backends.openai import OpenAIBackend

    _refuse_llama_cpp_options(backend_cfg, name)
    if not backend_cfg.base_url:
        raise BackendError("the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1")
    if model_cfg.adapter:
        raise BackendError("--adapter does not apply to the openai backend: the server's model is used as it is")
    return OpenAIBackend(
        backend_cfg.base_url,
        model_cfg.model,
        api_key=os.environ.get("CAP_API_KEY"),
        concurrency=backend_cfg.concurrency,
        timeout_s=backend_cfg.request_timeout_s,
        retries=backend_cfg.retries,
    )


def _refuse_transformers_options(model_cfg, name: str) -> None:
    for option in ("quantization", "device", "dtype"):
        if getattr(model_cfg, option) != "auto":
            raise BackendError(
                f"--{option} applies to the transformers backend only; {name} "
                "runs the model as its file or server has it"
            )
    if model_cfg.allow_plain_prompt:
        raise BackendError(
            f"--allow-plain-prompt applies to the transformers backend only; {name} needs a chat template"
        )


def _refuse_openai_options(backend_cfg: BackendConfig, name: str) -> None:
    if backend_cfg.base_url:
        raise BackendError(f"--base-url is for the openai backend; the {name} backend runs the model in this process")


def _refuse_llama_cpp_options(backend_cfg: BackendConfig, name: str) -> None:
    if backend_cfg.contexts is not None:
        raise BackendError(f"--contexts is for the llama.cpp backend; the {name} backend does not use it")


def _llama_cpp_backend(model_cfg, contexts: int | None):
    from cap_app.backends.llama_cpp import LlamaCppBackend
    from cap_app.models.loading import resolve_source

    source = resolve_source(model_cfg)
    path = Path(source.path).expanduser()
    if path.suffix != ".gguf":
        raise BackendError(
            f"the llama.cpp backend needs a .gguf model file; '{source.name}' is not one "
            "(use --backend transformers, or write one with `python -m cap_app gguf`)"
        )
    if not path.is_file():
        raise BackendError(f"model '{source.name}' not found: no such file")
    name = source.name
    if source.adapter:
        from cap_app.models.gguf import ExportError, cached_export

        try:
            path = cached_export(path, source.adapter)
        except ExportError as error:
            raise BackendError(f"cannot merge adapter '{source.adapter}' for llama.cpp: {error}") from None
        name += f" + {Path(source.adapter).name}"
    return LlamaCppBackend(path, name=name, contexts=contexts)


def as_backend(model) -> Backend:
    """A backend from what callers pass to the engine: a backend, or a transformers LoadedModel."""
    from cap_app.models.loading import LoadedModel

    if isinstance(model, LoadedModel):
        from cap_app.backends.transformers import TransformersBackend

        return TransformersBackend(model)
    return model
