"""What the server remembers of the Annotate tab's sessions, in memory: the order of each session's
key presses, and the batch each account has open. A restart forgets both (nothing judged is lost:
judgements are in the store)."""

from __future__ import annotations

import collections
import contextlib
import threading
import time

from cap_app.annotate.store import Store


class SessionOrder:
    """Runs each page session's numbered calls (judgements and undo, numbered in key order by the
    page) one after the other in that order, whatever order they arrive in; calls of different
    sessions, and unnumbered ones (API clients), run at once. A number that never arrives holds the
    next one up for at most `wait_s`."""

    def __init__(self, wait_s: float = 5.0, sessions: int = 10_000):
        self.wait_s, self.sessions = wait_s, sessions
        self._done: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def turn(self, session: str | None, number: str | int | None):
        try:
            number = int(number or 0)
        except (TypeError, ValueError):
            number = 0
        if not session or number <= 0:
            yield
            return
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self._done.get(session, 0) < number - 1 and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
        try:
            yield
        finally:
            with self._changed:
                self._done[session] = max(self._done.get(session, 0), number)
                self._done.move_to_end(session)
                while len(self._done) > self.sessions:
                    self._done.popitem(last=False)
                self._changed.notify_all()


SESSION_ORDER = SessionOrder()


class OpenBatches:
    """The batch and item each annotator has open, by store and name, kept in the server's memory (the
    newest of the account's sessions) so that a reloaded page reopens them (reopen); at most `size`
    annotators, the least recent forgotten first. A restart of the server forgets them."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self._open: collections.OrderedDict[tuple[str, str], dict] = collections.OrderedDict()
        self._lock = threading.Lock()

    def set(self, store: Store, name: str, state: dict) -> None:
        key = (str(store.path), name)
        with self._lock:
            if state.get("batch") is None:
                self._open.pop(key, None)
                return
            self._open[key] = {"batch": state["batch"], "position": state.get("position", 0)}
            self._open.move_to_end(key)
            while len(self._open) > self.size:
                self._open.popitem(last=False)

    def get(self, store: Store, name: str) -> dict | None:
        with self._lock:
            return self._open.get((str(store.path), name))


OPEN_BATCHES = OpenBatches()
