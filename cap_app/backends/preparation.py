"""Prepare a model in the background and say how far it is: what the app does when it starts.

On an empty model cache (a Space after a restart, a fresh container) the offline default is
converted from the bundled GGUF, merged with the CaP adapter and written as a llama.cpp file once
(`cap_app.models.loading`, `cap_app.models.gguf`): tens of seconds. The app starts that at launch in a
thread (`start`), so the page is usable meanwhile, and a visitor who clicks Refine before it is
done joins the same load and sees its phase and time (`Loading.status`) instead of a bare
"Loading". The loaders name their long steps with `cap_app.models.progress.report`. `python -m cap_app prepare` runs the
same load to the end (the Docker image does it at build time, so its first visitor waits for nothing).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from cap_app import backends
from cap_app.models import progress

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_loads: dict[tuple, Loading] = {}
LOADING = "loading the model"  # the step until a loader names another


class Loading:
    """One `get_backend` call run in its own thread, with the step it is at and its times."""

    def __init__(self, model_cfg, backend_cfg, listener=None):
        self.model_cfg, self.backend_cfg, self.listener = model_cfg, backend_cfg, listener
        self.started = self.phase_started = time.monotonic()
        self.finished: float | None = None
        self.phase = LOADING
        self.done = threading.Event()
        self._backend = None
        self._error: BaseException | None = None
        # a daemon: a stop (SIGTERM) must not wait for a conversion; its cache entries are written atomically
        self.thread = threading.Thread(target=self._run, name="cap-model-preparation", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with progress.reporting_to(self._on_phase):
                self._backend = backends.get_backend(self.model_cfg, self.backend_cfg)
        except BaseException as error:  # handed to whoever waits for the result
            self._error = error
        finally:
            self.finished = time.monotonic()
            self.done.set()
            with _lock:  # forget it: a finished load must not keep a model the backends have let go
                for key in [key for key, loading in _loads.items() if loading is self]:
                    del _loads[key]

    def _on_phase(self, phase: str) -> None:
        """The loader starts a long step: recorded, and passed to the listener (the prepare command prints it)."""
        self.phase, self.phase_started = phase, time.monotonic()
        if self.listener is not None:
            self.listener(phase)

    def result(self, timeout: float | None = None):
        """The backend once loaded; raises what the load raised (ModelLoadError, BackendError...)."""
        if not self.done.wait(timeout):
            raise TimeoutError("the model is still being prepared")
        if self._error is not None:
            raise self._error
        return self._backend

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def status(self) -> str:
        """What a waiting visitor reads: the step, its time and the load's time."""
        if self.done.is_set():
            return f"Model ready ({self.elapsed_s:.0f} s)."
        step = time.monotonic() - self.phase_started
        if self.phase == LOADING:  # from a prepared cache, or already loaded (then it is handed over at once)
            return "Loading the model…" + (f" {self.elapsed_s:.0f} s" if self.elapsed_s >= 1 else "")
        total = f", {self.elapsed_s:.0f} s in all" if self.elapsed_s - step >= 1 else ""
        return f"Preparing the model: {self.phase}… {step:.0f} s{total}. The refinement starts as soon as it is ready."


def _key(model_cfg, backend_cfg) -> tuple:
    return dataclasses.astuple(model_cfg), dataclasses.astuple(backend_cfg)


def load(model_cfg, backend_cfg, listener=None) -> Loading:
    """The load of this model and backend: the one in flight if there is one (a visitor joins the
    app's own preparation), else a new one (instant when `get_backend` already holds the model)."""
    key = _key(model_cfg, backend_cfg)
    with _lock:
        loading = _loads.get(key)
        if loading is None or loading.done.is_set():
            loading = _loads[key] = Loading(model_cfg, backend_cfg, listener)
        return loading


def start(model_cfg, backend_cfg) -> Loading:
    """Begin preparing a model now, in the background (the app's launch); failures are logged and
    reach the visitor again when a refinement asks for the model."""
    loading = load(model_cfg, backend_cfg)

    def log_outcome() -> None:
        try:
            loading.result()
        except Exception as error:
            logger.warning("preparing the model failed: %s", str(error).splitlines()[0] if str(error) else error)
        else:
            logger.info("model ready in %.1f s", loading.elapsed_s)

    threading.Thread(target=log_outcome, name="cap-model-preparation-log", daemon=True).start()
    return loading
