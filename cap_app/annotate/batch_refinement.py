"""Refine all: the refinement of every item of a batch, in the background on the server.

Why on the server: a batch of hundreds of items takes an hour on 2 CPU cores, longer than anyone
keeps a page open; the job runs in a daemon thread of the app, stores each result the moment it is
done (`Store.add_refinement(..., source="batch")`, committed when it returns), so annotators judge
items as they become ready, and everyone who opens the batch sees the same progress (`progress`,
`progress_line`), read from the database.

How it runs: one worker thread per batch, one item at a time, through the engine's `refine_stream`
(the call that takes a cancel event) on the backend `get_backend` loads for the job's settings, the
same backends `python -m cap_app refine --input` uses (so an openai server works too). Before each
item the worker waits while any interactive refinement is in flight (cap_app.backends.priority),
and asks the store for the next item without a refinement, so an item refined meanwhile (by Run,
or stored before a crash) is never redone.

Stop cancels the item in flight through the engine's cancel event: its generation ends at the next
token and nothing of it is stored; a resume refines it again. A server that stops or is killed
mid-batch leaves the job 'running' in the database: `resume_interrupted` (called when the app
starts) picks it up with its stored settings, losing only the item that was in flight.

Only an admin may start, stop or resume (accounts.require_admin): a job occupies the server's model
for hours (every visitor's refinements wait behind its items on a small machine, and on an openai
backend it spends the operator's tokens), and its refinements are what every annotator then judges.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from datetime import datetime

from cap_app.annotate.accounts import Identity, require_admin
from cap_app.annotate.store import Item, RefineJob, Store, StoreError
from cap_app.backends import Backend, BackendConfig, priority
from cap_app.engine.refine import RefineConfig
from cap_app.models.loading import ModelConfig

logger = logging.getLogger(__name__)
ADMIN_ACTION = "start or stop the refinement of a whole batch"
MAX_ERROR_CHARS = 300  # an error is shown in the progress line: one line, this long at most


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """What a job refines with, stored with it (so a resume, after a restart too, refines as it began).

    The page builds these from the Annotate tab's settings (cap_app.ui.settings: refine_config,
    model_config, backend_config), which check them against what the server grants a visitor."""

    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)

    def to_json(self) -> str:
        return json.dumps({name: dataclasses.asdict(getattr(self, name)) for name in ("refine", "model", "backend")})

    @classmethod
    def from_json(cls, text: str) -> JobSettings:
        """The settings a job stored; fields this version does not know are left out (a newer app's)."""
        data = json.loads(text)
        parts = {}
        for name, kind in (("refine", RefineConfig), ("model", ModelConfig), ("backend", BackendConfig)):
            known = {field.name for field in dataclasses.fields(kind)}
            parts[name] = kind(**{key: value for key, value in (data.get(name) or {}).items() if key in known})
        return cls(**parts)


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """A batch's Refine all as everyone sees it. `state` is None when it was never started."""

    batch_id: int
    state: str | None  # 'running', 'stopped', 'done', 'failed' (store.REFINE_JOB_STATES) or None
    done: int  # items of the batch with a refinement (from a file, Run, or this job)
    total: int  # items in the batch
    items_per_s: float | None  # this job's items since this run began (or resumed); None before the first
    seconds_left: float | None  # at that speed; None when unknown or not running
    error: str | None  # one line: why it failed, or which items could not be refined
    started_by: str | None
    waiting: bool  # running, but paused while interactive refinements are in flight


# -- starting and stopping (admins only) -----------------------------------------------------------


def start(
    store: Store, batch_id: int, identity: Identity, settings: JobSettings, *, backend: Backend | None = None
) -> JobProgress:
    """Refine every item of the batch that has no refinement, with `settings`, in the background.
    Refused (accounts.Refused) unless `identity` is an admin; StoreError for an unknown batch or a
    job already running. `backend` replaces the one the settings load (tests pass a stub)."""
    require_admin(identity, ADMIN_ACTION)
    job = store.start_refine_job(batch_id, settings.to_json(), identity.name)
    if job is None:
        raise StoreError(f"Batch {batch_id} is being refined already.")
    _launch(store, job, backend)
    return progress(store, batch_id)


def resume(store: Store, batch_id: int, identity: Identity, *, backend: Backend | None = None) -> JobProgress:
    """Go on with a stopped or failed job, with the settings it was started with (admins only)."""
    require_admin(identity, ADMIN_ACTION)
    job = store.resume_refine_job(batch_id)
    if job is None:
        raise StoreError(f"Batch {batch_id} has no stopped refinement to resume.")
    _launch(store, job, backend)
    return progress(store, batch_id)


def stop(store: Store, batch_id: int, identity: Identity, *, wait_s: float = 0.0) -> JobProgress:
    """Stop the batch's job (admins only): the item in flight is cancelled, not stored (a resume
    refines it again); every item finished before stays. Waits up to `wait_s` for the worker to end.
    Works on a job another process runs too: that worker sees the state before its next item."""
    require_admin(identity, ADMIN_ACTION)
    if not store.end_refine_job(batch_id, "stopped"):
        raise StoreError(f"Batch {batch_id} is not being refined.")
    with _workers_lock:
        worker = _workers.get(batch_id)
    if worker is not None:
        worker.stop.set()
        worker.cancel.set()
        worker.thread.join(wait_s)
    return progress(store, batch_id)


def resume_interrupted(store: Store, *, backend: Backend | None = None) -> list[int]:
    """At the app's start: go on with every job the last server left 'running' (it stopped or was
    killed mid-batch), with their stored settings; the ids of their batches. No identity: an admin
    started them."""
    resumed = []
    for job in store.refine_jobs("running"):
        with _workers_lock:
            if job.batch_id in _workers:  # already running in this process
                continue
        job = store.resume_refine_job(job.batch_id, interrupted=True)
        if job is not None:
            _launch(store, job, backend)
            resumed.append(job.batch_id)
    return resumed


def wait(batch_id: int, timeout_s: float | None = None) -> bool:
    """Wait for this process's worker of the batch to end; True when none is running (the CLI and tests)."""
    with _workers_lock:
        worker = _workers.get(batch_id)
    if worker is None:
        return True
    worker.thread.join(timeout_s)
    return not worker.thread.is_alive()


# -- progress (for everyone) -----------------------------------------------------------------------


def progress(store: Store, batch_id: int) -> JobProgress:
    """The batch's Refine all now: how far, how fast, how long still, and how it ended."""
    job = store.refine_job(batch_id)
    done, total, this_run = store.refine_job_counts(batch_id, job.resumed_at if job is not None else None)
    if job is None:
        return JobProgress(batch_id, None, done, total, None, None, None, None, False)
    ended = _seconds(job.done_at) if job.done_at else time.time()
    elapsed = max(ended - _seconds(job.resumed_at), 1e-6)
    rate = this_run / elapsed if this_run else None
    left = (total - done) / rate if rate and job.state == "running" else None
    with _workers_lock:
        worker = _workers.get(batch_id)
    waiting = bool(worker is not None and worker.waiting and job.state == "running")
    return JobProgress(batch_id, job.state, done, total, rate, left, job.error, job.started_by, waiting)


def progress_line(store: Store, batch_id: int) -> str:
    """`progress` in one line for the Annotate tab."""
    return describe(progress(store, batch_id))


def describe(p: JobProgress) -> str:
    """One line for a JobProgress (what `progress_line` shows)."""
    counted = f"{p.done} / {p.total} items refined"
    speed = f", {p.items_per_s:.2f} items/s" if p.items_per_s else ""
    if p.state is None:
        return f"Refine all has not run on this batch: {counted}."
    if p.state == "running":
        left = f", about {_duration(p.seconds_left)} left" if p.seconds_left is not None else ""
        paused = " (paused while someone refines interactively)" if p.waiting else ""
        return f"Refine all is running{paused}: {counted}{speed}{left} (started by {p.started_by})."
    if p.state == "stopped":
        return f"Refine all is stopped: {counted}; Refine all goes on from there."
    if p.state == "done":
        note = f" {p.error}" if p.error else ""
        return f"Refine all is done: {counted}{speed}.{note}"
    return f"Refine all failed: {counted}. {p.error or 'No reason was recorded.'}"


# -- the worker --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Worker:
    stop: threading.Event  # set by Stop (or a newer run of the same batch)
    cancel: threading.Event  # the engine's cancel event of the item in flight
    thread: threading.Thread | None = None
    waiting: bool = False  # paused while interactive refinements are in flight


_workers: dict[int, _Worker] = {}  # batch id -> its worker in this process
_workers_lock = threading.Lock()


def _launch(store: Store, job: RefineJob, backend: Backend | None) -> None:
    worker = _Worker(threading.Event(), threading.Event())
    worker.thread = threading.Thread(
        target=_run_job,
        args=(store, job.batch_id, JobSettings.from_json(job.settings), backend, worker),
        name=f"cap-refine-all-{job.batch_id}",
        daemon=True,  # a stop signal ends the app at once (cap_app.ui.stopping); the job resumes at the next start
    )
    with _workers_lock:
        old = _workers.get(job.batch_id)
        if old is not None:  # a stopped worker still ending its item: it must not start another
            old.stop.set()
            old.cancel.set()
        _workers[job.batch_id] = worker
    worker.thread.start()


def _run_job(store: Store, batch_id: int, settings: JobSettings, backend: Backend | None, worker: _Worker) -> None:
    """The worker's loop: load the backend, then refine item after item until none is left or
    someone stops the job; every way out is recorded in the store."""
    try:
        if backend is None:
            from cap_app.backends import get_backend

            backend = get_backend(settings.model, settings.backend)
        skipped = _refine_items(store, batch_id, settings.refine, backend, worker)
        if not worker.stop.is_set():
            store.end_refine_job(batch_id, "done", _skipped_note(skipped))
    except Exception as error:  # the model would not load, the sandbox would not start, a server went away
        logger.exception("the refinement of batch %s failed", batch_id)
        store.end_refine_job(batch_id, "failed", one_line(error))
    finally:
        with _workers_lock:
            if _workers.get(batch_id) is worker:
                del _workers[batch_id]


def _refine_items(
    store: Store, batch_id: int, config: RefineConfig, backend: Backend, worker: _Worker
) -> dict[int, str]:
    """Refine each item without a refinement, in order; the items that cannot be refined (position
    -> why) are skipped, not retried in this run."""
    skipped: dict[int, str] = {}
    position = -1
    while True:
        worker.waiting = priority.interactive_in_flight() > 0
        ready = priority.wait_for_interactive(worker.stop)
        worker.waiting = False
        if not ready or _stopped_elsewhere(store, batch_id, worker.stop):
            return skipped
        item = store.next_unrefined_item(batch_id, position)
        if item is None:
            return skipped
        position = item.position
        result, why = _refine_one(item, config, backend, worker.cancel)
        if worker.cancel.is_set():  # stopped: the item in flight is not stored
            return skipped
        if result is None:
            skipped[item.position] = why
            continue
        try:
            store.add_refinement(item.id, result, "batch")
        except StoreError:
            if _stopped_elsewhere(store, batch_id, worker.stop):  # the batch was deleted meanwhile
                return skipped
            raise


def _refine_one(item: Item, config: RefineConfig, backend: Backend, cancel: threading.Event):
    """(the item's RefinementResult, "") or (None, why it cannot be refined: its input, or a draft
    that leaves the model no room; or "stopped"). Anything else is the job's failure, raised."""
    from cap_app.backends.base import ContextError
    from cap_app.engine.inputs import InputError, RefineItem
    from cap_app.engine.refine import refine_stream

    try:
        events = refine_stream(
            RefineItem(item.question, item.draft, item.gold), config=config, backend=backend, cancel=cancel
        )
        for event in events:
            if event.kind == "done":
                return event.result, ""
    except (InputError, ContextError) as error:
        return None, one_line(error)
    return None, "stopped"


def _stopped_elsewhere(store: Store, batch_id: int, stop_event: threading.Event) -> bool:
    """True when the job is no longer 'running' in the store (stopped by another process, or the
    batch deleted): this worker ends too."""
    job = store.refine_job(batch_id)
    if job is None or job.state != "running":
        stop_event.set()
        return True
    return False


def _skipped_note(skipped: dict[int, str]) -> str | None:
    """The done line's note on the items this run could not refine: how many, which, and the first's reason."""
    if not skipped:
        return None
    first = min(skipped)
    listed = ", ".join(str(position + 1) for position in sorted(skipped)[:10]) + ("…" if len(skipped) > 10 else "")
    count = "1 item" if len(skipped) == 1 else f"{len(skipped)} items"
    return one_line(f"{count} could not be refined ({listed}; item {first + 1}: {skipped[first]})")


def one_line(error: object) -> str:
    """An error as the progress line shows it: its first line, at most MAX_ERROR_CHARS."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
