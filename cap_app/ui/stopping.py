"""A clean stop on SIGTERM and SIGINT, as PID 1 of a container too.

The kernel ignores every signal that PID 1 has no handler for, and Python installs none for
SIGTERM, so `docker stop` (or a Space's restart) would wait out its grace period and SIGKILL the
app, leaving the sandbox's private folders in /tmp. `install` makes both signals raise the
KeyboardInterrupt that Gradio's wait loop handles (`serve_until_stopped`): it closes the server
(no new requests; those in flight get `REQUESTS_GRACE_S` to finish), then the sandbox is stopped,
which removes its folders, and the process ends (`os._exit`: the interpreter's teardown would
only free memory, slowly). Should that take longer than `STOP_GRACE_S` (a request that does not
end, a thread that hangs), a watchdog does the same; a second signal does it at once. Either way
no acknowledged judgement is lost: the store commits each one before the page is told it was saved.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

logger = logging.getLogger(__name__)
STOP_GRACE_S = 3.0  # from the signal to the end of the process, at most (plus the sandbox's own stop)
REQUESTS_GRACE_S = 1.5  # how long the server lets requests in flight finish (a judgement's write takes ms)
_stopping = threading.Event()


def _end_now(status: int) -> None:
    """Stop the sandbox (its folders go with it), flush what is printed, and exit without waiting
    for threads or for the interpreter's teardown (freeing the model took 1.5-2 s of an idle stop)."""
    from cap_app.sandbox import runner

    try:
        runner.stop_servers()
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _watchdog(signum: int) -> None:
    threading.Event().wait(STOP_GRACE_S)
    waiting = sorted(t.name for t in threading.enumerate() if t.is_alive() and not t.daemon)
    print(f"the app did not stop within {STOP_GRACE_S:.0f} s of the signal: ending it (threads: {waiting})", flush=True)
    _end_now(128 + signum)


def _handle(signum: int, frame) -> None:
    if _stopping.is_set():  # a second signal: no more waiting
        _end_now(128 + signum)
    _stopping.set()
    print(f"{signal.Signals(signum).name}: stopping the app", flush=True)
    threading.Thread(target=_watchdog, args=(signum,), name="cap-stop-watchdog", daemon=True).start()
    raise KeyboardInterrupt


def install() -> bool:
    """Handle SIGTERM and SIGINT as above; only the main thread may set handlers (False elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _handle)
    return True


def serve_until_stopped(demo) -> None:
    """Gradio's own wait for the KeyboardInterrupt (its launch with prevent_thread_lock=True), with
    the server told to give requests in flight `REQUESTS_GRACE_S` to finish: otherwise it waits for
    every open connection (a page's event stream, an API client's) until its own 5 s limit."""
    if demo.server is not None:
        demo.server.config.timeout_graceful_shutdown = REQUESTS_GRACE_S
    demo.block_thread()
    if _stopping.is_set():  # the server is closed: nothing is left to finish
        _end_now(0)
