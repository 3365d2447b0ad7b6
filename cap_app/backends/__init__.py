"""Generation backends: which engine writes the programs, chosen once per command or app.

Each backend is a module of its own (`transformers`, `llama_cpp`, `openai`) keeping the contract of
`base.py`; `registry.py` names them, with their settings, needs and help, and says what `auto`
picks. This module holds the settings a command or the page gives (`BackendConfig`) and hands out
the backend they ask for, loaded once per process (`get_backend`). The offline default's CaP adapter
is merged into a GGUF once for llama.cpp (`cap_app.models.gguf.cached_export`).
"""

from __future__ import annotations

import dataclasses
import os
import threading

from cap_app.backends.base import Backend, BackendError
from cap_app.backends.registry import AUTO, BACKENDS, REGISTRY, auto_backend, backends_help, refuse_foreign_options


@dataclasses.dataclass
class BackendConfig:
    backend: str = dataclasses.field(default=AUTO, metadata={"help": backends_help(), "choices": BACKENDS})
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


def resolve_backend(model_cfg, backend_cfg: BackendConfig) -> str:
    """The backend `auto` stands for, given the model asked for and this machine."""
    from cap_app.models.loading import resolve_source

    name = backend_cfg.backend
    if name == AUTO:
        name = os.environ.get("CAP_BACKEND") or AUTO
        if name not in BACKENDS:
            raise BackendError(f"CAP_BACKEND='{name}' is not a backend; choose one of {', '.join(REGISTRY)}")
    if name != AUTO:
        return name
    return auto_backend(resolve_source(model_cfg).path, backend_cfg.base_url)


_cache_lock = threading.Lock()
_cached: tuple[tuple, Backend] | None = None


def get_backend(model_cfg, backend_cfg: BackendConfig | None = None) -> Backend:
    """The backend for these settings, loaded once per process and reused while they stay the same
    (`get_model` holds the transformers model itself). Raises BackendError or ModelLoadError with a
    one-line reason; settings a backend cannot honour are refused, not ignored."""
    global _cached
    backend_cfg = backend_cfg or BackendConfig()
    name = resolve_backend(model_cfg, backend_cfg)
    entry = REGISTRY[name]
    refuse_foreign_options(name, model_cfg, backend_cfg)
    if entry.keeps_own_model:
        return entry.load(model_cfg, backend_cfg)
    key = (name, dataclasses.astuple(model_cfg), dataclasses.astuple(backend_cfg), os.environ.get("CAP_API_KEY"))
    with _cache_lock:
        if _cached is None or _cached[0] != key:
            _cached = None  # one model in memory at a time
            _cached = (key, entry.load(model_cfg, backend_cfg))
        return _cached[1]


def as_backend(model) -> Backend:
    """A backend from what callers pass to the engine: a backend, or a transformers LoadedModel."""
    from cap_app.models.loading import LoadedModel

    if isinstance(model, LoadedModel):
        from cap_app.backends.transformers import TransformersBackend

        return TransformersBackend(model)
    return model
