"""Interactive refinements go first: the gate between a person waiting on a page and background work.

Why: a batch refinement (cap_app.annotate.batch_refinement) can keep the model busy for hours, and
on 2 CPU cores every item it generates beside a visitor's halves the visitor's speed. So the page's
refinements (the Refine tab's Refine, the Annotate tab's Run) mark themselves with `interactive()`,
and background work calls `wait_for_interactive()` before each item: it starts no new item while
any interactive refinement is in flight. An item already generating when a visitor arrives runs on
beside it (one item is seconds, and cancelling it would waste them); the next one waits.

It lives under backends/ because it is about sharing the generation backend, below both the page
(cap_app.ui) and the annotation package, which both import it and nothing else of each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_changed = threading.Condition()
_in_flight = 0  # interactive refinements running now, in this process


@contextlib.contextmanager
def interactive() -> Iterator[None]:
    """Mark the enclosed refinement as someone's interactive request: background work waits for it."""
    global _in_flight
    with _changed:
        _in_flight += 1
    try:
        yield
    finally:
        with _changed:
            _in_flight -= 1
            _changed.notify_all()


def interactive_in_flight() -> int:
    """How many interactive refinements are running now."""
    with _changed:
        return _in_flight


def wait_for_interactive(stop: threading.Event | None = None, *, poll_s: float = 0.25) -> bool:
    """Block while any interactive refinement is in flight; True once none is, False when `stop` is
    set first (the background work was asked to stop, so it should not start another item)."""
    with _changed:
        while _in_flight:
            if stop is not None and stop.is_set():
                return False
            _changed.wait(poll_s)  # woken at once by the last interactive refinement's end; polls `stop`
    return not (stop is not None and stop.is_set())
