"""Annotation persistence in SQLite: batches of items, their refinements, and judgements.

Why SQLite: one file, no server, safe for several annotators (threads and processes) at once in
WAL mode, and every write is a committed transaction the moment a call returns, so a server
killed mid-session loses nothing it acknowledged. The schema is versioned; `MIGRATIONS` only
ever grows, and opening an older file upgrades it in place.

Judgements are append-only snapshots of one annotator's form for one refinement: the newest
snapshot that is not undone is the current judgement, and "undo" marks the annotator's newest
snapshot undone, which brings the previous one back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from cap_app.annotate.accounts import MAX_NAME_CHARS, normal_name
from cap_app.engine.results import RefinementResult, result_from_json
from cap_app.engine.triage import TRIAGE_ORDER, confidence

# The judgement form's values: the page's radios and keyboard shortcuts, the exports and the charts read these.
CORRECT_CHOICES = ("yes", "no", "unsure")
VS_DRAFT_CHOICES = ("better", "same", "worse")
MAX_NOTE_CHARS = 5000  # the page's note field stops typing here too
SPACES_DATA_DIR = "/data"  # Hugging Face Spaces persistent storage
IMPORT_WAIT_S = 600.0  # how long a load waits for other sessions' imports before giving up

# Each entry is one schema version (index + 1): a tuple of statements run in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE batches (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            draft_key TEXT NOT NULL,
            item_count INTEGER NOT NULL,
            errors TEXT NOT NULL,  -- JSON list of [line, message], first few only
            error_count INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,  -- when the import finished (the import started at created_at)
            complete INTEGER NOT NULL DEFAULT 0,  -- hidden until every row is in
            UNIQUE (sha256, draft_key)
        )""",
        """CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            batch_id INTEGER NOT NULL REFERENCES batches(id),
            position INTEGER NOT NULL,  -- 0-based order in the batch
            line INTEGER NOT NULL,  -- line of the source file it first came from
            key TEXT NOT NULL,  -- hash of (question, draft): rows repeating an item add refinements to it
            question TEXT NOT NULL,
            draft TEXT NOT NULL,
            gold TEXT,
            UNIQUE (batch_id, position),
            UNIQUE (batch_id, key)
        )""",
        """CREATE TABLE refinements (
            id INTEGER PRIMARY KEY,
            item_id INTEGER NOT NULL REFERENCES items(id),
            source TEXT NOT NULL,  -- 'file' (precomputed) or 'run' (from the app)
            result TEXT NOT NULL,  -- RefinementResult as JSON
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX refinements_by_item ON refinements(item_id)",
        """CREATE TABLE judgements (
            id INTEGER PRIMARY KEY,
            refinement_id INTEGER NOT NULL REFERENCES refinements(id),
            annotator TEXT NOT NULL,
            correct TEXT CHECK (correct IN ('yes', 'no', 'unsure')),
            vs_draft TEXT CHECK (vs_draft IN ('better', 'same', 'worse')),
            first_wrong_step INTEGER CHECK (first_wrong_step >= 1),
            note TEXT NOT NULL,
            created_at TEXT NOT NULL,
            undone_at TEXT
        )""",
        "CREATE INDEX judgements_by_refinement ON judgements(refinement_id, annotator)",
        "CREATE INDEX judgements_by_annotator ON judgements(annotator, id)",
    ),
    (
        # Audit: where a judgement came from. `annotator` is the signed-in account since version 2
        # (cap_app/annotate/accounts.py); origin is 'page' or 'api', and '' for rows written before.
        "ALTER TABLE judgements ADD COLUMN origin TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Triage: the refiner's verdict, answers and confidence (engine/triage.confidence) beside each
        # refinement, so a large batch sorts and filters in SQL; backfilled from the stored JSON.
        "ALTER TABLE refinements ADD COLUMN verdict TEXT",
        "ALTER TABLE refinements ADD COLUMN program_answer TEXT",
        "ALTER TABLE refinements ADD COLUMN draft_answer TEXT",
        "ALTER TABLE refinements ADD COLUMN confidence REAL",
        """UPDATE refinements SET
            verdict = json_extract(result, '$.verdict'),
            program_answer = COALESCE(
                json_extract(result, '$.program_answer'),
                json_extract(result, '$.candidates[' || json_extract(result, '$.chosen') || '].answer')),
            draft_answer = json_extract(result, '$.draft_answer'),
            confidence = COALESCE(
                json_extract(result, '$.candidates[' || json_extract(result, '$.chosen') || '].logprob'),
                (SELECT AVG(json_extract(value, '$.logprob')) FROM json_each(result, '$.candidates')))""",
        # Refine all: one background refinement per batch (its refinements have source 'batch'), its
        # state and the settings it runs with (so a stopped or interrupted one resumes as it started).
        """CREATE TABLE refine_jobs (
            batch_id INTEGER PRIMARY KEY REFERENCES batches(id),
            state TEXT NOT NULL CHECK (state IN ('running', 'stopped', 'done', 'failed')),
            settings TEXT NOT NULL,  -- JSON: the refinement settings and model/backend choice
            started_by TEXT NOT NULL,
            started_at TEXT NOT NULL,
            resumed_at TEXT NOT NULL,  -- when this run (first or resumed) began: items/s counts from here
            done_at TEXT,
            error TEXT
        )""",
    ),
)


class StoreError(ValueError):
    """Bad input to the store (shown to the user as is) or a database it cannot use."""


KEEP = object()  # a judgement field not given: it keeps its current value
_EMPTY_FORM = {"correct": None, "vs_draft": None, "first_wrong_step": None, "note": ""}
ORIGINS = ("page", "api", "")


@dataclasses.dataclass(frozen=True)
class Batch:
    id: int
    name: str
    sha256: str
    draft_key: str
    item_count: int
    errors: list[tuple[int, str]]
    error_count: int
    created_at: str


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    batch_id: int
    position: int
    line: int
    question: str
    draft: str
    gold: str | None


@dataclasses.dataclass(frozen=True)
class NewItem:
    """One parsed row, before it has an id: what item_files.py hands to `Store.add_batch`."""

    line: int
    question: str
    draft: str
    gold: str | None = None
    refinements: tuple[RefinementResult, ...] = ()


@dataclasses.dataclass(frozen=True)
class StoredRefinement:
    id: int
    item_id: int
    source: str
    result: RefinementResult
    created_at: str


@dataclasses.dataclass(frozen=True)
class Judgement:
    id: int
    refinement_id: int
    annotator: str
    correct: str | None
    vs_draft: str | None
    first_wrong_step: int | None
    note: str
    created_at: str
    origin: str = ""  # 'page' (a browser on the app's page) or 'api'; '' before schema version 2


@dataclasses.dataclass(frozen=True)
class JudgedRow:
    """A current judgement with everything an export needs about what was judged."""

    judgement: Judgement
    item: Item
    batch_name: str
    refinement: StoredRefinement


@dataclasses.dataclass(frozen=True)
class RefineJob:
    """A batch's background refinement (Refine all), as the refine_jobs table keeps it."""

    batch_id: int
    state: str  # one of REFINE_JOB_STATES
    settings: str  # JSON: what cap_app.annotate.batch_refinement.JobSettings writes
    started_by: str
    started_at: str
    resumed_at: str  # when this run (the first or a resumed one) began
    done_at: str | None  # when the last run ended (done, stopped or failed); None while running
    error: str | None  # one line: why it failed, or which items could not be refined


REFINE_JOB_STATES = ("running", "stopped", "done", "failed")


def default_db_path(data_dir: str = SPACES_DATA_DIR) -> Path:
    """$CAP_DB_PATH, else Spaces persistent storage when mounted and writable, else ./annotations.db."""
    configured = os.environ.get("CAP_DB_PATH")
    if configured:
        return Path(configured)
    if os.path.isdir(data_dir) and os.access(data_dir, os.W_OK):
        return Path(data_dir) / "annotations.db"
    return Path("annotations.db")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_annotator(annotator: str | None) -> str:
    """The name as stored (whitespace runs made one space); "" when none is given, which is fine for
    looking, not for judging. StoreError when it is too long to store."""
    name = normal_name(annotator)
    if len(name) > MAX_NAME_CHARS:
        raise StoreError(f"Annotator name is longer than {MAX_NAME_CHARS} characters.")
    return name


def _check_step(step: object) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise StoreError("The first wrong step must be a whole step number.")
    if isinstance(step, float) and not step.is_integer():
        raise StoreError("The first wrong step must be a whole step number.")
    if step < 1:
        raise StoreError("The first wrong step must be 1 or more (leave it empty when no step is wrong).")
    return int(step)


def _clean_annotator(annotator: str | None) -> str:
    name = check_annotator(annotator)
    if not name:
        raise StoreError("Enter your annotator name first.")
    return name


class Store:
    """The annotation database at `path` (created and migrated on open).

    Each call opens its own short-lived connection, so one Store is safe to share between the
    threads of a web server, and several processes may open the same file.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, busy_timeout_s: float = 30.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.busy_timeout_s = busy_timeout_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the folder of the annotation database {self.path}: {exc}") from exc
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            with self._transaction() as conn:
                self._migrate(conn)
        except sqlite3.DatabaseError as exc:  # e.g. the path holds some other kind of file
            raise StoreError(f"Cannot use {self.path} as the annotation database: {exc}") from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot open the annotation database {self.path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so concurrent writers queue instead of deadlocking."""
        with self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # still locked after busy_timeout_s
                raise StoreError(f"The annotation database is busy ({exc}); try again.") from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file up to the latest schema (inside the caller's write transaction)."""
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}; this app knows up to {len(MIGRATIONS)}. Upgrade the app."
            )
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
        else:
            conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    def schema_version(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT version FROM schema_version").fetchone()[0]

    # -- batches and items ------------------------------------------------------------------

    def find_batch(self, sha256: str, draft_key: str) -> Batch | None:
        """The batch already loaded from the same file bytes with the same draft key, if any."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM batches WHERE sha256 = ? AND draft_key = ? AND complete", (sha256, draft_key)
            ).fetchone()
        return _batch(row) if row else None

    def add_batch(
        self,
        name: str,
        sha256: str,
        draft_key: str,
        items: Iterable[NewItem],
        errors: list[tuple[int, str]],
        *,
        chunk_rows: int = 500,
        max_stored_errors: int = 200,
    ) -> tuple[Batch, bool]:
        """Insert a batch, consuming `items` lazily (a large file never sits in memory); return it and
        whether it is new (False: the same file was loaded by someone else meanwhile, or while this
        call waited for their import to finish).

        Rows are committed `chunk_rows` at a time, so other annotators' judgements never wait long
        for the write lock; the batch stays hidden until complete, and an import that died half
        way is cleared by the next load of the same file. `errors` may still grow while `items`
        is consumed (the parser appends as it goes); it is read once all items are in.
        """
        with self._import_lock():
            with self._transaction() as conn:
                existing = conn.execute(
                    "SELECT * FROM batches WHERE sha256 = ? AND draft_key = ?", (sha256, draft_key)
                ).fetchone()
                if existing is not None and existing["complete"]:
                    return _batch(existing), False
                if existing is not None:  # we hold the import lock, so whoever started this import died
                    _delete_batch(conn, existing["id"])
                batch_id = conn.execute(
                    "INSERT INTO batches (name, sha256, draft_key, item_count, errors, error_count, created_at,"
                    " updated_at) VALUES (?, ?, ?, 0, '[]', 0, ?, ?)",
                    (name, sha256, draft_key, _now(), ""),  # updated_at: set when the import finishes
                ).lastrowid
            try:
                return self._fill_batch(batch_id, items, errors, chunk_rows, max_stored_errors), True
            except BaseException:
                with self._transaction() as conn:
                    _delete_batch(conn, batch_id)
                raise

    def _fill_batch(
        self,
        batch_id: int,
        items: Iterable[NewItem],
        errors: list[tuple[int, str]],
        chunk_rows: int,
        max_stored_errors: int,
    ) -> Batch:
        count = 0
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, chunk_rows)):
            with self._transaction() as conn:
                for item in chunk:
                    count += _insert_item(conn, batch_id, count, item)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE batches SET item_count = ?, errors = ?, error_count = ?, complete = 1, updated_at = ?"
                " WHERE id = ?",
                (count, json.dumps(errors[:max_stored_errors]), len(errors), _now(), batch_id),
            )
            return _batch(conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone())

    @contextlib.contextmanager
    def _import_lock(self) -> Iterator[None]:
        """One import at a time per database, held by an OS file lock: sessions loading the same
        new file wait for the first and then share its batch, and the lock dies with its process,
        so an import cut short by a crash is redone by the next load at once (no stale timer)."""
        lock_path = self.path.with_name(self.path.name + ".import-lock")
        try:
            handle = open(lock_path, "a")
        except OSError as exc:
            raise StoreError(f"Cannot open the import lock {lock_path}: {exc}") from exc
        with handle:
            deadline = time.monotonic() + IMPORT_WAIT_S
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError("Another file is still being loaded; try again in a few minutes.") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def delete_batch(self, batch_id: int) -> Batch:
        """Delete a loaded batch with its items, refinements and every judgement of them (an admin's
        call: the judgements go too, so export first)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM batches WHERE id = ? AND complete", (batch_id,)).fetchone()
            if row is None:
                raise StoreError(f"No batch {batch_id}.")
            _delete_batch(conn, batch_id)
        return _batch(row)

    def list_batches(self) -> list[Batch]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM batches WHERE complete ORDER BY id DESC").fetchall()
        return [_batch(row) for row in rows]

    def batch(self, batch_id: int) -> Batch:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM batches WHERE id = ? AND complete", (batch_id,)).fetchone()
        if row is None:
            raise StoreError(f"No batch {batch_id}.")
        return _batch(row)

    def item_at(self, batch_id: int, position: int) -> Item:
        """An item of a complete batch (an import still running, or cut short, is nobody's to see)."""
        return _item(
            self._fetch_one(
                "SELECT items.* FROM items JOIN batches b ON b.id = items.batch_id"
                " WHERE items.batch_id = ? AND items.position = ? AND b.complete",
                (batch_id, position),
                f"Batch {batch_id} has no item {position + 1}.",
            )
        )

    def item(self, item_id: int) -> Item:
        return _item(self._fetch_one("SELECT * FROM items WHERE id = ?", (item_id,), f"No item {item_id}."))

    # -- refinements --------------------------------------------------------------------------

    def add_refinement(self, item_id: int, result: RefinementResult, source: str = "run") -> StoredRefinement:
        with self._transaction() as conn:
            if (
                conn.execute(f"SELECT 1 FROM items WHERE id = ? AND {_COMPLETE_ITEM_SQL}", (item_id,)).fetchone()
                is None
            ):
                raise StoreError(f"No item {item_id}.")
            refinement_id = _insert_refinement(conn, item_id, result, source)
            row = conn.execute("SELECT * FROM refinements WHERE id = ?", (refinement_id,)).fetchone()
        return _refinement(row)

    def refinement(self, refinement_id: int) -> StoredRefinement:
        return _refinement(
            self._fetch_one(
                "SELECT * FROM refinements WHERE id = ?", (refinement_id,), f"No refinement {refinement_id}."
            )
        )

    def _fetch_one(self, sql: str, params: tuple, missing: str) -> sqlite3.Row:
        """The one row `sql` selects, or a StoreError saying what is missing."""
        with self._connect() as conn:
            row = conn.execute(sql, params).fetchone()
        if row is None:
            raise StoreError(missing)
        return row

    def refinements(self, item_id: int) -> list[StoredRefinement]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM refinements WHERE item_id = ? ORDER BY id", (item_id,)).fetchall()
        return [_refinement(row) for row in rows]

    # -- refine jobs (Refine all: cap_app/annotate/batch_refinement.py) ------------------------

    def next_unrefined_item(self, batch_id: int, after_position: int = -1) -> Item | None:
        """The first item after `after_position` that has no refinement at all. Asked afresh before
        each item, so an item refined meanwhile (by Run, or by a run of the job before a crash) is
        never refined again."""
        with self._connect() as conn:
            row = conn.execute(
                f"""SELECT items.* FROM items WHERE batch_id = ? AND position > ? AND {_COMPLETE_ITEM_SQL}
                    AND NOT EXISTS (SELECT 1 FROM refinements r WHERE r.item_id = items.id)
                    ORDER BY position LIMIT 1""",
                (batch_id, after_position),
            ).fetchone()
        return _item(row) if row else None

    def refine_job(self, batch_id: int) -> RefineJob | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM refine_jobs WHERE batch_id = ?", (batch_id,)).fetchone()
        return _refine_job(row) if row else None

    def refine_jobs(self, state: str) -> list[RefineJob]:
        """Every batch's job in `state` (at the app's start: those a stopped server left 'running')."""
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM refine_jobs WHERE state = ? ORDER BY batch_id", (state,)).fetchall()
        return [_refine_job(row) for row in rows]

    def start_refine_job(self, batch_id: int, settings: str, started_by: str) -> RefineJob | None:
        """Record a new run of the batch's job with these settings (replacing an ended one); None when
        one is running already (one job per batch: two would refine the same items twice)."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM batches WHERE id = ? AND complete", (batch_id,)).fetchone() is None:
                raise StoreError(f"No batch {batch_id}.")
            row = conn.execute("SELECT state FROM refine_jobs WHERE batch_id = ?", (batch_id,)).fetchone()
            if row is not None and row["state"] == "running":
                return None
            now = _now()
            conn.execute(
                "INSERT OR REPLACE INTO refine_jobs (batch_id, state, settings, started_by, started_at, resumed_at,"
                " done_at, error) VALUES (?, 'running', ?, ?, ?, ?, NULL, NULL)",
                (batch_id, settings, started_by, now, now),
            )
            return _refine_job(conn.execute("SELECT * FROM refine_jobs WHERE batch_id = ?", (batch_id,)).fetchone())

    def resume_refine_job(self, batch_id: int, *, interrupted: bool = False) -> RefineJob | None:
        """Run the batch's job again with its stored settings, counting items/s from now: one that
        ended (stopped or failed), or with `interrupted` one the last server left 'running'. None
        when there is no such job (never started, or already running here)."""
        wanted = "state = 'running'" if interrupted else "state != 'running'"
        with self._transaction() as conn:
            changed = conn.execute(
                f"UPDATE refine_jobs SET state = 'running', resumed_at = ?, done_at = NULL, error = NULL"
                f" WHERE batch_id = ? AND {wanted}",
                (_now(), batch_id),
            ).rowcount
            if not changed:
                return None
            return _refine_job(conn.execute("SELECT * FROM refine_jobs WHERE batch_id = ?", (batch_id,)).fetchone())

    def end_refine_job(self, batch_id: int, state: str, error: str | None = None) -> bool:
        """Record how a running job ended ('stopped', 'done' or 'failed', with `error` in one line);
        False when it was not running (a stop recorded first wins over the worker's own end)."""
        if state not in REFINE_JOB_STATES[1:]:
            raise StoreError(f"Unknown end of a refine job {state!r}.")
        with self._transaction() as conn:
            return bool(
                conn.execute(
                    "UPDATE refine_jobs SET state = ?, error = ?, done_at = ? WHERE batch_id = ? AND state = 'running'",
                    (state, error, _now(), batch_id),
                ).rowcount
            )

    def refine_job_counts(self, batch_id: int, since: str | None) -> tuple[int, int, int]:
        """(items with a refinement, items in the batch, 'batch' refinements stored since `since`: 0 without)."""
        with self._connect() as conn:
            row = conn.execute(
                """SELECT
                     (SELECT COUNT(*) FROM items WHERE batch_id = :batch
                        AND EXISTS (SELECT 1 FROM refinements r WHERE r.item_id = items.id)),
                     (SELECT COUNT(*) FROM items WHERE batch_id = :batch),
                     (SELECT COUNT(*) FROM refinements r JOIN items ON items.id = r.item_id
                        WHERE items.batch_id = :batch AND r.source = 'batch' AND r.created_at >= :since
                          AND :since IS NOT NULL)""",
                {"batch": batch_id, "since": since},
            ).fetchone()
        return row[0], row[1], row[2]

    # -- judgements ---------------------------------------------------------------------------

    def judge(
        self,
        refinement_id: int,
        annotator: str,
        *,
        correct: str | None | object = KEEP,
        vs_draft: str | None | object = KEEP,
        first_wrong_step: int | None | object = KEEP,
        note: str | object = KEEP,
        origin: str = "",
    ) -> Judgement | None:
        """Record `annotator`'s current judgement of a refinement; committed to disk when this returns.

        Fields not given keep their current value, read inside the same transaction: a click on one
        field never resets another that a click just before it stored. `annotator` is the signed-in
        identity (cap_app.annotate.accounts), `origin` where the call came from. Returns the current judgement
        (None for an empty form with nothing recorded before)."""
        annotator = _clean_annotator(annotator)
        if origin not in ORIGINS:
            raise StoreError(f"Unknown origin {origin!r}.")
        changes = {}
        if correct is not KEEP:
            correct = correct or None
            if correct is not None and correct not in CORRECT_CHOICES:
                raise StoreError(f"'Refinement correct' must be one of {', '.join(CORRECT_CHOICES)}.")
            changes["correct"] = correct
        if vs_draft is not KEEP:
            vs_draft = vs_draft or None
            if vs_draft is not None and vs_draft not in VS_DRAFT_CHOICES:
                raise StoreError(f"'Compared to the draft' must be one of {', '.join(VS_DRAFT_CHOICES)}.")
            changes["vs_draft"] = vs_draft
        if first_wrong_step is not KEEP:
            changes["first_wrong_step"] = _check_step(first_wrong_step)
        if note is not KEEP:
            if note is not None and not isinstance(note, str):
                raise StoreError("The note must be text.")
            note = (note or "").strip()
            if len(note) > MAX_NOTE_CHARS:
                raise StoreError(f"The note is longer than {MAX_NOTE_CHARS} characters.")
            changes["note"] = note
        with self._transaction() as conn:
            known = conn.execute(
                "SELECT 1 FROM refinements r JOIN items ON items.id = r.item_id"
                f" WHERE r.id = ? AND {_COMPLETE_ITEM_SQL}",
                (refinement_id,),
            ).fetchone()
            if known is None:  # or of an import still running: only complete batches are judged
                raise StoreError(f"No refinement {refinement_id}.")
            current = _current_judgement(conn, refinement_id, annotator)
            form = dict(_EMPTY_FORM)
            if current is not None:
                form = {name: getattr(current, name) for name in form}
            snapshot = {**form, **changes}
            if snapshot == form:  # unchanged (e.g. a field left without editing), or an empty form
                return current  # (None: an empty form is not a judgement): no new entry
            judgement_id = conn.execute(
                "INSERT INTO judgements (refinement_id, annotator, correct, vs_draft, first_wrong_step, note,"
                " created_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    refinement_id,
                    annotator,
                    snapshot["correct"],
                    snapshot["vs_draft"],
                    snapshot["first_wrong_step"],
                    snapshot["note"],
                    _now(),
                    origin,
                ),
            ).lastrowid
            row = conn.execute(f"SELECT {_JUDGEMENT_COLUMNS} FROM judgements WHERE id = ?", (judgement_id,)).fetchone()
        return Judgement(**dict(row))

    def current_judgement(self, refinement_id: int, annotator: str) -> Judgement | None:
        with self._connect() as conn:
            return _current_judgement(conn, refinement_id, _clean_annotator(annotator))

    def undo_last(self, annotator: str) -> Judgement | None:
        """Mark `annotator`'s newest judgement undone and return it (None when there is nothing to undo)."""
        annotator = _clean_annotator(annotator)
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_JUDGEMENT_COLUMNS} FROM judgements WHERE annotator = ? AND undone_at IS NULL"
                " ORDER BY id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE judgements SET undone_at = ? WHERE id = ?", (_now(), row["id"]))
        return Judgement(**dict(row))

    def progress(self, batch_id: int, annotator: str | None) -> tuple[int, int]:
        """(items `annotator` has judged, items in the batch)."""
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT COALESCE(SUM({_JUDGED_SQL}), 0), COUNT(*) FROM items WHERE batch_id = ?",
                (annotator or "", batch_id),
            ).fetchone()
        return row[0], row[1]

    # -- triage: the item list by the refiner's verdict ---------------------------------------

    def items_page(
        self,
        batch_id: int,
        annotator: str | None,
        offset: int,
        limit: int,
        *,
        order: str = "position",
        verdict: str = "all",
    ) -> list[ItemRow]:
        """One page of a batch's items in `order` (ITEM_ORDERS), only those whose newest refinement
        has `verdict` (VERDICT_FILTERS), each with that refinement's verdict and answers. Sorted and
        filtered here, in SQL, because a batch may hold many thousands of items."""
        where, where_params = _verdict_filter(verdict)
        with self._connect() as conn:
            rows = conn.execute(
                f"""{_TRIAGE_CTE}
                    SELECT items.*, newest.verdict, newest.program_answer, newest.draft_answer, newest.confidence,
                       (SELECT COUNT(*) FROM refinements r WHERE r.item_id = items.id) AS n_refinements,
                       {_JUDGED_SQL} AS judged
                    {_NEWEST_FROM} WHERE items.batch_id = ? {where}
                    ORDER BY {_item_order(order)} LIMIT ? OFFSET ?""",
                (*_TRIAGE_PLACES, annotator or "", batch_id, *where_params, max(1, limit), max(0, offset)),
            ).fetchall()
        return [
            ItemRow(
                _item(row),
                row["n_refinements"],
                bool(row["judged"]),
                row["verdict"],
                row["program_answer"],
                row["draft_answer"],
                row["confidence"],
            )
            for row in rows
        ]

    def next_unjudged(
        self, batch_id: int, annotator: str | None, after_position: int, order: str = "position"
    ) -> int | None:
        """Position of the next item `annotator` has not judged after the item at `after_position` in
        `order` (ITEM_ORDERS), wrapping round; from the first when `after_position` names no item."""
        with self._connect() as conn:
            row = conn.execute(
                f"""{_TRIAGE_CTE},
                    ranked AS (
                      SELECT items.position, {_JUDGED_SQL} AS judged,
                             ROW_NUMBER() OVER (ORDER BY {_item_order(order)}) AS rank
                      {_NEWEST_FROM} WHERE items.batch_id = ?)
                    SELECT position FROM ranked WHERE NOT judged
                    ORDER BY rank <= COALESCE((SELECT rank FROM ranked WHERE position = ?), 0), rank LIMIT 1""",
                (*_TRIAGE_PLACES, annotator or "", batch_id, after_position),
            ).fetchone()
        return row[0] if row else None

    def current_judgements(self) -> Iterator[JudgedRow]:
        """Every annotator's current judgement of every refinement, in item order (streams)."""
        with self._connect() as conn:
            rows = conn.execute(
                f"""SELECT {", ".join("j." + c.strip() for c in _JUDGEMENT_COLUMNS.split(","))},
                       i.id AS i_id, i.batch_id, i.position, i.line, i.question, i.draft, i.gold,
                       b.name AS batch_name,
                       r.source AS r_source, r.result AS r_result, r.created_at AS r_created_at
                    FROM judgements j
                    JOIN refinements r ON r.id = j.refinement_id
                    JOIN items i ON i.id = r.item_id
                    JOIN batches b ON b.id = i.batch_id
                    WHERE j.undone_at IS NULL AND j.id = (
                        SELECT MAX(id) FROM judgements k
                        WHERE k.refinement_id = j.refinement_id AND k.annotator = j.annotator
                          AND k.undone_at IS NULL)
                    ORDER BY i.batch_id, i.position, r.id, j.annotator"""
            )
            for row in rows:
                judgement = Judgement(**{c: row[c] for c in _JUDGEMENT_FIELDS})
                item = Item(
                    row["i_id"],
                    row["batch_id"],
                    row["position"],
                    row["line"],
                    row["question"],
                    row["draft"],
                    row["gold"],
                )
                refinement = StoredRefinement(
                    row["refinement_id"],
                    row["i_id"],
                    row["r_source"],
                    result_from_json(json.loads(row["r_result"])),
                    row["r_created_at"],
                )
                yield JudgedRow(judgement, item, row["batch_name"], refinement)


# Rows are read by these names, so a later migration may add columns without breaking older code.
_BATCH_FIELDS = [f.name for f in dataclasses.fields(Batch)]
_ITEM_FIELDS = [f.name for f in dataclasses.fields(Item)]
_REFINEMENT_FIELDS = [f.name for f in dataclasses.fields(StoredRefinement)]
_JUDGEMENT_FIELDS = [f.name for f in dataclasses.fields(Judgement)]
_JUDGEMENT_COLUMNS = ", ".join(_JUDGEMENT_FIELDS)
# 1 when the row of `items` belongs to a complete batch.
_COMPLETE_ITEM_SQL = "EXISTS (SELECT 1 FROM batches b WHERE b.id = items.batch_id AND b.complete)"
# 1 when the annotator (first parameter) has a current judgement with a verdict on any refinement of the item.
_JUDGED_SQL = """EXISTS (SELECT 1 FROM refinements r JOIN judgements j ON j.refinement_id = r.id
                 WHERE r.item_id = items.id AND j.annotator = ? AND j.undone_at IS NULL
                   AND j.correct IS NOT NULL)"""

# -- triage (the item list by the refiner's verdict, engine/triage.py) ----------------------------
ITEM_ORDERS = ("position", "triage")  # the item list's sorts; "triage" is engine.triage's order
NOT_REFINED = "not refined"  # the verdict filter for items without any refinement yet
VERDICT_FILTERS = ("all", *TRIAGE_ORDER, NOT_REFINED)


@dataclasses.dataclass(frozen=True)
class ItemRow:
    """One item of the list with what its newest refinement's verdict says about the draft."""

    item: Item
    refinements: int
    judged: bool  # by the annotator asked about
    verdict: str | None  # None: no refinement yet
    program_answer: str | None
    draft_answer: str | None
    confidence: float | None  # engine.triage.confidence of that refinement (None: unknown)


# triage(verdict, place): TRIAGE_ORDER as a table (its values are the query's first parameters), so
# the order is read from engine.triage, not spelt again here.
_TRIAGE_CTE = "WITH triage(verdict, place) AS (VALUES " + ", ".join(["(?, ?)"] * len(TRIAGE_ORDER)) + ")"
_TRIAGE_PLACES = tuple(value for place, verdict in enumerate(TRIAGE_ORDER) for value in (verdict, place))
# Each item with its newest refinement (none: NULLs) and that verdict's place in the triage order.
_NEWEST_FROM = """FROM items
    LEFT JOIN refinements newest ON newest.id = (SELECT MAX(id) FROM refinements WHERE item_id = items.id)
    LEFT JOIN triage ON triage.verdict = newest.verdict"""
# engine.triage.triage_key in SQL: the verdict's place (an unknown verdict after the known ones), the
# confidence lowest first (unknown after known); items without a refinement after all; then position.
_ORDER_SQL = {
    "position": "items.position",
    "triage": f"""newest.id IS NULL, COALESCE(triage.place, {len(TRIAGE_ORDER)}),
                  newest.confidence IS NULL, newest.confidence, items.position""",
}


def _item_order(order: str) -> str:
    if order not in _ORDER_SQL:
        raise StoreError(f"Unknown item order {order!r}; choose one of {', '.join(ITEM_ORDERS)}.")
    return _ORDER_SQL[order]


def _verdict_filter(verdict: str) -> tuple[str, tuple]:
    """The WHERE clause (and its parameters) that keeps the items whose newest refinement has `verdict`."""
    if verdict not in VERDICT_FILTERS:
        raise StoreError(f"Unknown verdict filter {verdict!r}; choose one of {', '.join(VERDICT_FILTERS)}.")
    if verdict == "all":
        return "", ()
    if verdict == NOT_REFINED:
        return "AND newest.id IS NULL", ()
    return "AND newest.verdict = ?", (verdict,)


def _insert_item(conn: sqlite3.Connection, batch_id: int, position: int, item: NewItem) -> int:
    """Insert `item` at `position`, or add its refinements to the same (question, draft) already in
    the batch; return how many items were added (1 or 0)."""
    key = hashlib.sha256(f"{item.question}\0{item.draft}".encode()).hexdigest()
    row = conn.execute("SELECT id FROM items WHERE batch_id = ? AND key = ?", (batch_id, key)).fetchone()
    if row is None:
        item_id = conn.execute(
            "INSERT INTO items (batch_id, position, line, key, question, draft, gold) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (batch_id, position, item.line, key, item.question, item.draft, item.gold),
        ).lastrowid
    else:
        item_id = row[0]
    for result in item.refinements:
        _insert_refinement(conn, item_id, result, "file")
    return int(row is None)


def _delete_batch(conn: sqlite3.Connection, batch_id: int) -> None:
    """Remove a batch with everything that refers to it, children first (foreign keys are on). An
    incomplete import cannot be judged today, but a file written by an older version may hold such
    judgements: leaving them would fail every later load of that file."""
    refinements = "SELECT r.id FROM refinements r JOIN items i ON i.id = r.item_id WHERE i.batch_id = ?"
    conn.execute(f"DELETE FROM judgements WHERE refinement_id IN ({refinements})", (batch_id,))
    conn.execute("DELETE FROM refinements WHERE item_id IN (SELECT id FROM items WHERE batch_id = ?)", (batch_id,))
    conn.execute("DELETE FROM items WHERE batch_id = ?", (batch_id,))
    conn.execute("DELETE FROM refine_jobs WHERE batch_id = ?", (batch_id,))  # a running job sees it gone and ends
    conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))


def _current_judgement(conn: sqlite3.Connection, refinement_id: int, annotator: str) -> Judgement | None:
    row = conn.execute(
        f"SELECT {_JUDGEMENT_COLUMNS} FROM judgements WHERE refinement_id = ? AND annotator = ?"
        " AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
        (refinement_id, annotator),
    ).fetchone()
    return Judgement(**dict(row)) if row else None


def _insert_refinement(conn: sqlite3.Connection, item_id: int, result: RefinementResult, source: str) -> int:
    return conn.execute(
        """INSERT INTO refinements
           (item_id, source, result, created_at, verdict, program_answer, draft_answer, confidence)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            item_id,
            source,
            json.dumps(result.to_dict()),
            _now(),
            result.verdict,
            result.program_answer,
            result.draft_answer,
            confidence(result),
        ),
    ).lastrowid


def _item(row: sqlite3.Row) -> Item:
    return Item(**{name: row[name] for name in _ITEM_FIELDS})


def _batch(row: sqlite3.Row) -> Batch:
    data = {name: row[name] for name in _BATCH_FIELDS}
    data["errors"] = [tuple(error) for error in json.loads(data["errors"])]
    return Batch(**data)


def _refinement(row: sqlite3.Row) -> StoredRefinement:
    data = {name: row[name] for name in _REFINEMENT_FIELDS}
    data["result"] = result_from_json(json.loads(data["result"]))
    return StoredRefinement(**data)


def _refine_job(row: sqlite3.Row) -> RefineJob:
    return RefineJob(**{field.name: row[field.name] for field in dataclasses.fields(RefineJob)})


# Answer fields of a RefinementResult line: text to every view, but a hand-made or foreign file may
# hold JSON numbers there (18, -7, -Infinity), which the views and answer checks cannot read.
