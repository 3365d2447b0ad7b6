"""Let a loader name its long steps (converting a GGUF file, merging an adapter) for whoever waits.

The loaders sit below the backends and know nothing of who started them; the background
preparation (`cap_app.backends.preparation`) listens in the thread it runs them in.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

_local = threading.local()  # the listener of this thread's load, if any


def report(phase: str) -> None:
    """A loader starts a long step (e.g. "converting the bundled GGUF model")."""
    listener = getattr(_local, "listener", None)
    if listener is not None:
        listener(phase)


@contextlib.contextmanager
def reporting_to(listener: Callable[[str], None]) -> Iterator[None]:
    """Hand the steps reported in this thread to `listener` while the block runs."""
    _local.listener = listener
    try:
        yield
    finally:
        _local.listener = None
