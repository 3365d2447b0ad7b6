"""Where the app runs: the model choice from the environment, the queue limits, and ZeroGPU.

On a Hugging Face ZeroGPU Space a GPU is attached only while a function decorated with
`spaces.GPU` runs, so only model generation is wrapped; the sandbox runs outside it. Elsewhere
(no `spaces` package, or SPACES_ZERO_GPU unset) the wrapper is the identity.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TypeVar

from cap_app.storage import is_hosted, is_persistent

F = TypeVar("F", bound=Callable)

DEFAULT_MODEL_CHOICE = "default"
# Refinements in flight at once. The model's lock lets one of them generate at a time; the others
# meanwhile run their programs in the sandbox, which runs in parallel.
CONCURRENCY_LIMIT = int(os.environ.get("CAP_CONCURRENCY", "4"))
QUEUE_SIZE = int(os.environ.get("CAP_QUEUE_SIZE", "16"))  # waiting refinements before "busy, try again"
GPU_SECONDS = int(os.environ.get("CAP_GPU_SECONDS", "120"))  # ZeroGPU time asked for per generation
# What one visitor may ask for (the settings sliders use the same bounds): (low, high). The sliders
# start at RefineConfig's defaults, as the CLI does (cap_app.ui.settings.default_settings).
WEB_LIMITS = {"n": (1, 8), "temperature": (0.0, 1.5), "max_new_tokens": (16, 1024), "time_limit_s": (1, 30)}
WEB_STEPS = {"n": 1, "temperature": 0.05, "max_new_tokens": 16, "time_limit_s": 1}  # the sliders' steps


def zero_gpu_enabled() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU")) and importlib.util.find_spec("spaces") is not None


def on_gpu(fn: F) -> F:
    """`spaces.GPU(fn)` on a ZeroGPU Space, `fn` unchanged anywhere else."""
    if not zero_gpu_enabled():
        return fn
    import spaces

    return spaces.GPU(duration=GPU_SECONDS)(fn)


def wrap_generation_for_zero_gpu() -> bool:
    """On ZeroGPU, put the transformers backend's two generation functions (its only model calls) under spaces.GPU.

    The backend calls them as `cap_app.backends.transformers` module attributes, so replacing those
    covers every caller; the sandbox and everything else keep running on the CPU.
    """
    if not zero_gpu_enabled():
        return False
    from cap_app.backends import transformers

    for name in ("generate_stream", "generate_batch"):
        fn = getattr(transformers, name)
        if not getattr(fn, "_on_zero_gpu", False):
            wrapped = on_gpu(fn)
            wrapped._on_zero_gpu = True
            setattr(transformers, name, wrapped)
    return True


def backend_choices() -> list[str]:
    """Backends a visitor may pick: `auto` ($CAP_BACKEND, else the fastest this machine has for
    the model) and those that can run here (`BackendEntry.available`): a server's only when the
    operator named one in $CAP_BASE_URL (a visitor never chooses where requests go)."""
    from cap_app.backends.registry import AUTO, REGISTRY

    base_url = os.environ.get("CAP_BASE_URL")
    return [AUTO, *(name for name, entry in REGISTRY.items() if entry.available(base_url))]


def model_choices() -> list[str]:
    """Models a visitor may pick: $CAP_MODEL (or the offline default) plus $CAP_MODEL_CHOICES.

    A public page must not let visitors make the server download arbitrary models, so the list
    comes from the operator, never from the request.
    """
    first = os.environ.get("CAP_MODEL") or DEFAULT_MODEL_CHOICE
    extra = [m.strip() for m in os.environ.get("CAP_MODEL_CHOICES", "").split(",") if m.strip()]
    return list(dict.fromkeys([first, *extra]))


def storage_notice(db_path: str | os.PathLike) -> str:
    """The Annotate tab's warning where judgements will not outlive a restart: a Space or container
    whose database is neither on persistent storage nor where the operator put it ($CAP_DB_PATH).
    "" elsewhere (a local ./annotations.db stays)."""
    if not is_hosted() or os.environ.get("CAP_DB_PATH") or is_persistent(db_path):
        return ""
    return (
        "**Judgements made here are lost when this app restarts** (the database is on a disk that a restart "
        "wipes): to keep them, enable persistent storage in the Space's settings (mounted at `/data`, where the "
        "app then keeps its database) or set `CAP_DB_PATH` to a lasting location."
    )
