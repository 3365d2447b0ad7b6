"""Item files for the annotators: (question, draft[, gold][, refinements]) rows from JSONL or CSV,
loaded into the store as a batch (the store's word for a loaded file).

Files are untrusted and may be large: they are read row by row (never whole), every bad row is
reported with its line number and skipped, and the good rows go straight into the store. A row
is read as the engine reads a record (inputs.item_from_record: `question`; the draft as `draft`
or under a named draft source such as `6b_finetuning` holding `{"solution": ...}`; an optional
gold answer under `gold`, `ground_truth` or `answer`), so every loaded item can be refined. A
line written by `python -m cap_app refine --input ... --output ...` is a RefinementResult and
loads as an item with that refinement attached, so a batch can be judged without a model.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cap_app.annotate.store import Batch, NewItem, Store
from cap_app.engine.inputs import DRAFT_KEYS, InputError, RefineItem, item_from_record
from cap_app.engine.results import RefinementResult, result_from_json

MAX_LINE_BYTES = 1 << 20  # one row; longer lines are reported, not read into memory
_RESULT_FIELDS = {f.name for f in dataclasses.fields(RefinementResult)}


class BatchError(ValueError):
    """The file cannot be loaded at all (binary, no usable header, no valid row)."""


class RowError(ValueError):
    """One row is malformed; the message says why, the loader adds the line number."""


@dataclasses.dataclass(frozen=True)
class LoadReport:
    batch: Batch
    reused: bool  # the same file (and draft key) was already loaded: its items and judgements are shared

    def summary(self) -> str:
        """Markdown for the annotator: what loaded and which lines were skipped."""
        batch = self.batch
        head = f"**{_markdown_text(batch.name)}**: {items_text(batch.item_count)} loaded"
        if self.reused:
            head += " (already loaded: the same items, with every judgement made on them)"
        if not batch.error_count:
            return head + "."
        lines = [f"{head}; {batch.error_count} malformed row{'s' if batch.error_count != 1 else ''} skipped:"]
        lines += [f"- line {line}: {message}" for line, message in batch.errors]
        if batch.error_count > len(batch.errors):
            lines.append(f"- ... and {batch.error_count - len(batch.errors)} more")
        return "\n".join(lines)


def _markdown_text(text: str) -> str:
    """A file name (chosen by whoever uploaded it) shown as plain text inside Markdown."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>&])", r"\\\1", text)


def items_text(count: int) -> str:
    return f"{count} item" + ("" if count == 1 else "s")


def allowed_batch_dirs() -> list[Path]:
    """Folders a web visitor may load a batch from by path: $CAP_BATCH_DIRS (os.pathsep-separated),
    else ./data, ./examples and Spaces storage. Anything else on the server is off limits."""
    configured = os.environ.get("CAP_BATCH_DIRS")
    dirs = configured.split(os.pathsep) if configured else ["data", "examples", "/data"]
    return [Path(d).resolve() for d in dirs if d]


PATH_REFUSED = "That path cannot be loaded: give a file in the server's batch folders, or upload the file."


def allowed_batch_path(path: str, allowed: list[Path] | None = None) -> Path:
    """`path` resolved (links followed) if it is a file inside an allowed folder, else BatchError.
    Every refusal reads the same and names no folder: a visitor learns neither where the server
    keeps its files nor which files exist."""
    allowed = allowed_batch_dirs() if allowed is None else allowed
    try:
        resolved = Path(path).expanduser().resolve()
        inside = any(resolved.is_relative_to(folder) for folder in allowed)
        if not inside or not resolved.is_file():
            raise BatchError(PATH_REFUSED)
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, a NUL byte...
        raise BatchError(PATH_REFUSED) from exc
    return resolved


def load_batch(
    store: Store, path: str | os.PathLike, *, draft_key: str = "draft", name: str | None = None
) -> LoadReport:
    """Parse `path` into a new batch in `store`, or return the batch already loaded from the same bytes."""
    if draft_key not in DRAFT_KEYS:
        raise BatchError(f"Unknown draft key {draft_key!r}; choose one of {', '.join(DRAFT_KEYS)}.")
    path = Path(path)
    name = name or path.name
    try:
        sha256 = _file_sha256(path)
        existing = store.find_batch(sha256, draft_key)
        if existing is not None:
            return LoadReport(existing, reused=True)
        errors: list[tuple[int, str]] = []
        items = parse_items(path, draft_key, errors)
        first = next(items, None)
        if first is None:
            detail = f" ({len(errors)} malformed; line {errors[0][0]}: {errors[0][1]})" if errors else ""
            raise BatchError(f"{name} has no valid rows{detail}.")
        batch, created = store.add_batch(name, sha256, draft_key, itertools.chain([first], items), errors)
    except OSError as exc:
        raise BatchError(f"Cannot read {name}: {exc.strerror or exc}.") from exc
    return LoadReport(batch, reused=not created)


def parse_items(path: Path, draft_key: str, errors: list[tuple[int, str]]) -> Iterator[NewItem]:
    """Yield the valid rows of `path` one by one; append (line, message) to `errors` for the others."""
    with open(path, "rb") as fh:
        start = fh.read(8192)
        if _looks_binary(start):
            raise BatchError(f"{path.name} is a binary file, not JSONL or CSV text.")
        fh.seek(0)
        rows = _csv_rows(fh, errors) if _is_csv(path, start) else _jsonl_rows(fh, errors)
        for line, row in rows:
            try:
                yield _item(row, draft_key, line)
            except RowError as exc:
                errors.append((line, str(exc)))


def _looks_binary(start: bytes) -> bool:
    """Many control bytes (NUL and friends) mean an image, archive or database, not text; a few
    junk lines in a text file are reported line by line instead."""
    controls = sum(1 for byte in start if byte < 32 and byte not in b"\t\n\r\f\v")
    return controls > 0.05 * len(start)


def _is_csv(path: Path, start: bytes) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return False
    return suffix == ".csv" or not start.lstrip(codecs.BOM_UTF8 + b" \t\r\n").startswith(b"{")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lines(fh, errors: list[tuple[int, str]]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line; text is None (and the error recorded) for a line that is
    too long or not UTF-8. Lines are read with a size cap, so one huge line cannot fill memory."""
    for number in itertools.count(1):
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := fh.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            errors.append((number, f"line is longer than {MAX_LINE_BYTES // (1 << 20)} MiB"))
            yield number, None
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            errors.append((number, "not UTF-8 text"))
            yield number, None
            continue
        yield number, text


def _jsonl_rows(fh, errors: list[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    for number, text in _lines(fh, errors):
        if text is None or not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            errors.append((number, f"expected a JSON object, found {type(row).__name__}"))
            continue
        yield number, row


def _csv_rows(fh, errors: list[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    bad_lines: set[int] = set()

    def texts() -> Iterator[str]:  # csv reads decoded text; unreadable lines become blank ones
        for number, text in _lines(fh, errors):
            if text is None:
                bad_lines.add(number)
            yield "\n" if text is None else text

    reader = csv.reader(texts())
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.append((start, f"not valid CSV ({exc})"))
            continue
        if not record or bad_lines.intersection(range(start, reader.line_num + 1)):
            continue
        if header is None:
            header = [column.strip() for column in record]
            if "question" not in header:
                raise BatchError(
                    f"line {start}: the CSV header needs a 'question' column and a draft column "
                    f"(one of {', '.join(DRAFT_KEYS)}); it has {len(header)} columns, none named 'question'."
                )
            continue
        if len(record) != len(header):
            errors.append((start, f"expected {len(header)} fields, found {len(record)}"))
            continue
        yield start, dict(zip(header, record, strict=True))


def _item(row: dict, draft_key: str, line: int) -> NewItem:
    """One item from one row: a precomputed RefinementResult, or what the engine reads from a record
    (inputs.item_from_record), so every loaded item can be refined. The annotator's extras: a plain
    row needs a draft to judge (an empty cell is a missing draft), and texts are stored stripped."""
    try:
        if "candidates" in row:
            result = _refinement(row)
            item, refinements = RefineItem(result.question, result.draft, result.gold), (result,)
        else:
            item, refinements = item_from_record(row, draft_key=draft_key), ()
    except InputError as exc:
        raise RowError(str(exc)) from None
    if not refinements and not item.draft.strip():
        raise RowError(f"empty draft '{draft_key}'")
    return NewItem(
        line=line, question=item.question.strip(), draft=item.draft.strip(), gold=item.gold, refinements=refinements
    )


def _refinement(row: dict) -> RefinementResult:
    try:
        result = result_from_json({k: v for k, v in row.items() if k in _RESULT_FIELDS})
    except ValueError as exc:  # a field of the wrong kind, named
        raise RowError(str(exc)) from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise RowError(f"not a refinement result ({type(exc).__name__}: {exc})") from None
    if not isinstance(result.draft, str):
        raise RowError("refinement result has no draft")
    return result
