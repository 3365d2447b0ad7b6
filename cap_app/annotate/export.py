"""Turn annotators' judgements into training data (TRL preference / KTO JSONL), a CSV, and an
agreement summary.

The paper's second stage trains on correct vs incorrect programs for the same (question,
draft); that is exactly a DPO pair here: a program judged correct against one judged wrong.
Prompts and completions come from cap_app.engine.prompts, the same text the engine and SFT use. By
default the prompt is the conversational form (the CaP messages), which trl renders with the
chat template of whichever model it trains, and rows carry the `meta` that
`python -m cap_app train dpo` reads (docs/data_formats.md); with a tokenizer the prompt is that
tokenizer's exact prompt text (`format_prompt`). Both are formats trl's DPOTrainer and
KTOTrainer accept (https://huggingface.co/docs/trl/dataset_formats).

A refinement's label is the annotators' consensus on "refinement correct": yes when someone
said yes and nobody said no, wrong when the reverse; conflicts and "unsure" are left out.

Every row also carries what the refiner itself said of the judged refinement (its verdict on the
draft, the program's answer and the triage confidence: `RefinerVerdict`), and the summary counts the
judgements per verdict, so the team can see how good a flag the verdict was on their own data.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import tempfile
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TextIO

from cap_app.annotate.store import CORRECT_CHOICES, JudgedRow, Store
from cap_app.engine.prompts import trl_row
from cap_app.engine.results import RefinementResult
from cap_app.engine.triage import TRIAGE_ORDER, confidence

CSV_COLUMNS = (
    "batch",
    "item",
    "line",
    "question",
    "draft",
    "gold",
    "refinement_id",
    "refinement_source",
    "strategy",
    "model",
    "program",
    "refined_answer",
    "program_answer",
    "draft_answer",
    "verdict",
    "confidence",
    "annotator",
    "origin",
    "correct",
    "vs_draft",
    "first_wrong_step",
    "note",
    "judged_at",
)
CSV_NUMERIC_COLUMNS = ("item", "line", "refinement_id", "first_wrong_step", "confidence")  # numbers; the rest is text
# A cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection). A cell is
# compared in NFKC form, so full-width and small forms ("＝", "﹦", "﹢", "﹣", "﹫") count too, and
# after any invisible (format) characters or spaces in front, such as U+FEFF or U+200B, which some
# spreadsheets drop before reading the formula.
_SPREADSHEET_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass(frozen=True)
class RefinerVerdict:
    """What the refiner said of a refinement before anyone judged it (engine/triage.py)."""

    verdict: str | None  # on the draft: disagrees, unconfirmed, no_answer or agrees
    program_answer: str | None
    confidence: float | None  # engine.triage.confidence: the mean token log-prob (None: unknown)

    @classmethod
    def of(cls, result: RefinementResult) -> RefinerVerdict:
        return cls(result.verdict, result.program_answer, confidence(result))


@dataclasses.dataclass(frozen=True)
class Labeled:
    """One judged program with the consensus label of its refinement."""

    question: str
    draft: str
    gold: str | None
    program: str
    correct: bool
    judged_by: tuple[str, ...] = ()  # "name (origin)" of each signed-in judge: the audit trail in `meta`
    refiner: RefinerVerdict | None = None  # of the first refinement with this program


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Cohen's kappa of two annotators on one judgement field, over the refinements both judged."""

    annotator_a: str
    annotator_b: str
    field: str
    shared: int
    kappa: float | None  # None when undefined (both gave one and the same label throughout)


@dataclasses.dataclass
class ExportSummary:
    judgements: int
    annotators: list[str]
    labeled_programs: int
    conflicts: int  # refinements that annotators judged both correct and wrong
    without_program: int  # judged yes/no, but the model wrote no program to train on
    agreements: list[Agreement]
    label_counts: dict[str, Counter]  # annotator -> Counter of "correct" labels
    by_verdict: dict[str, Counter] = dataclasses.field(default_factory=dict)  # refiner's verdict -> "correct" labels
    format: str = ""  # set by `export`, with the two below
    rows_written: int = 0
    output: str = ""

    def text(self, *, full_path: bool = True) -> str:
        """The summary as lines of text; `full_path=False` names the written file without its folder
        (a web page must not show paths on the server)."""
        lines = []
        if self.output:
            where = self.output if full_path else Path(self.output).name
            why = f". {FORMATS[self.format].why_empty}" if not self.rows_written else ""
            rows = f"{self.rows_written} row" + ("" if self.rows_written == 1 else "s")
            lines.append(f"wrote {rows} to {where}{why}")
        lines.append(
            f"{self.judgements} current judgements by {len(self.annotators)} annotators; "
            f"{self.labeled_programs} programs with a yes/no consensus, {self.conflicts} conflicting, "
            f"{self.without_program} judged refinements without a program"
        )
        for name in self.annotators:
            counts = self.label_counts[name]
            lines.append(f"  {name}: " + ", ".join(f"{label} {counts[label]}" for label in CORRECT_CHOICES))
        for verdict, counts in self.by_verdict.items():
            labels = ", ".join(f"{label} {counts[label]}" for label in CORRECT_CHOICES)
            lines.append(f"  refiner said {verdict.replace('_', ' ')}: judged correct {labels}")
        for a in self.agreements:
            kappa = "undefined (a single label throughout)" if a.kappa is None else f"{a.kappa:.3f}"
            lines.append(
                f"Cohen's kappa {a.annotator_a} vs {a.annotator_b} on '{a.field}' ({a.shared} shared): {kappa}"
            )
        if not self.agreements:
            lines.append("agreement: no two annotators judged the same refinement")
        return "\n".join(lines)


def judged_program(result: RefinementResult) -> str | None:
    """The program an annotator sees and judges (the same one the side-by-side view and the trace show)."""
    shown = result.shown_candidate
    return shown.program if shown is not None else None


def labeled_programs(rows: Iterable[JudgedRow]) -> tuple[list[Labeled], int, int]:
    """Consensus-labeled programs (deduplicated per question, draft), the number of conflicts, and
    the number of consensus-labeled refinements with no program (nothing to train on)."""
    by_refinement: dict[int, tuple[JudgedRow, set[str], set[str]]] = {}
    for row in rows:
        if row.judgement.correct in ("yes", "no"):
            entry = by_refinement.setdefault(row.refinement.id, (row, set(), set()))
            entry[1].add(row.judgement.correct)
            entry[2].add(judge_label(row))
    labels: dict[tuple[str, str, str | None, str], set[bool]] = defaultdict(set)
    judges: dict[tuple[str, str, str | None, str], set[str]] = defaultdict(set)
    refiners: dict[tuple[str, str, str | None, str], RefinerVerdict] = {}
    conflicts = without_program = 0
    for row, verdicts, names in by_refinement.values():
        program = (judged_program(row.refinement.result) or "").strip("\n")
        if len(verdicts) > 1:
            conflicts += 1
        elif not program.strip():
            without_program += 1
        else:
            key = (row.item.question, row.item.draft, row.item.gold, program)
            labels[key].add(verdicts == {"yes"})
            judges[key] |= names
            refiners.setdefault(key, RefinerVerdict.of(row.refinement.result))
    labeled = [
        Labeled(*key, next(iter(v)), tuple(sorted(judges[key])), refiners[key])
        for key, v in labels.items()
        if len(v) == 1
    ]
    conflicts += sum(1 for v in labels.values() if len(v) > 1)  # one program, judged both ways
    return labeled, conflicts, without_program


def judge_label(row: JudgedRow) -> str:
    """Who judged, as exports name them: the signed-in account and where the judgement came from."""
    origin = row.judgement.origin or "before accounts"
    return f"{row.judgement.annotator} ({origin})"


def _meta(entry: Labeled, *others: Labeled, columns: tuple[str, ...]) -> dict:
    """What `python -m cap_app train` reads besides the trl columns (docs/data_formats.md), who
    judged the programs of the row, and what the refiner said of each (`refiner`: for each completion
    column, e.g. chosen and rejected, the RefinerVerdict of its program)."""
    entries = (entry, *others)
    judged_by = sorted({name for e in entries for name in e.judged_by})
    return {
        "question": entry.question,
        "draft": entry.draft,
        "gold": entry.gold,
        "source": "annotations",
        "judged_by": judged_by,
        "refiner": {
            column: dataclasses.asdict(e.refiner) if e.refiner else None
            for column, e in zip(columns, entries, strict=True)
        },
    }


def dpo_rows(labeled: list[Labeled], tokenizer=None) -> Iterator[dict]:
    """{prompt, chosen, rejected}: every correct program against every wrong one for the same (question, draft)."""
    groups: dict[tuple[str, str], list[Labeled]] = defaultdict(list)
    for entry in labeled:
        groups[(entry.question, entry.draft)].append(entry)
    for entries in groups.values():
        good = [e for e in entries if e.correct]
        bad = [e for e in entries if not e.correct]
        for chosen, rejected in itertools.product(good, bad):
            yield trl_row(
                chosen.question,
                chosen.draft,
                {"chosen": chosen.program, "rejected": rejected.program},
                _meta(chosen, rejected, columns=("chosen", "rejected")),
                tokenizer=tokenizer,
            )


def kto_rows(labeled: list[Labeled], tokenizer=None) -> Iterator[dict]:
    """{prompt, completion, label}: one row per labeled program (unpaired preference data)."""
    for entry in labeled:
        yield trl_row(
            entry.question,
            entry.draft,
            {"completion": entry.program},
            _meta(entry, columns=("completion",)),
            tokenizer=tokenizer,
            label=entry.correct,
        )


def csv_row(row: JudgedRow) -> dict:
    result, judgement = row.refinement.result, row.judgement
    refiner = RefinerVerdict.of(result)
    values = {
        "batch": row.batch_name,
        "item": row.item.position + 1,
        "line": row.item.line,
        "question": row.item.question,
        "draft": row.item.draft,
        "gold": row.item.gold,
        "refinement_id": row.refinement.id,
        "refinement_source": row.refinement.source,
        "strategy": result.strategy,
        "model": result.model,
        "program": judged_program(result),
        "refined_answer": result.refined_answer,
        "program_answer": refiner.program_answer,
        "draft_answer": result.draft_answer,
        "verdict": refiner.verdict,
        "confidence": refiner.confidence,
        "annotator": judgement.annotator,
        "origin": judgement.origin,
        "correct": judgement.correct,
        "vs_draft": judgement.vs_draft,
        "first_wrong_step": judgement.first_wrong_step,
        "note": judgement.note,
        "judged_at": judgement.created_at,
    }
    return {
        key: value if key in CSV_NUMERIC_COLUMNS else spreadsheet_safe(None if value is None else str(value))
        for key, value in values.items()
    }


def spreadsheet_safe(value: str | None) -> str | None:
    """Quote text a spreadsheet would run as a formula (CSV injection), as OWASP says: every text cell,
    number-like text too (Python reads "-inf" or "-1_000" as a number; a spreadsheet may not)."""
    if not value:
        return value
    if value.startswith(_SPREADSHEET_FORMULA_START):
        return "'" + value
    first = next((c for c in value if not (c.isspace() or unicodedata.category(c) == "Cf")), "")
    return "'" + value if unicodedata.normalize("NFKC", first).startswith(_SPREADSHEET_FORMULA_START) else value


def cohen_kappa(labels_a: list[str], labels_b: list[str]) -> float | None:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e); None when p_e == 1 (it is undefined)."""
    n = len(labels_a)
    if n == 0 or n != len(labels_b):
        raise ValueError("kappa needs two equally long, non-empty label lists")
    observed = sum(a == b for a, b in zip(labels_a, labels_b, strict=True)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    expected = sum(count_a[label] * count_b[label] for label in count_a) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


def agreements(rows: Iterable[JudgedRow]) -> list[Agreement]:
    """Kappa for every pair of annotators with shared refinements, on 'correct' and on 'vs_draft'."""
    by_field: dict[str, dict[str, dict[int, str]]] = {"correct": defaultdict(dict), "vs_draft": defaultdict(dict)}
    for row in rows:
        for field in by_field:
            value = getattr(row.judgement, field)
            if value is not None:
                by_field[field][row.judgement.annotator][row.refinement.id] = value
    out = []
    for field, per_annotator in by_field.items():
        for a, b in itertools.combinations(sorted(per_annotator), 2):
            shared = sorted(per_annotator[a].keys() & per_annotator[b].keys())
            if shared:
                kappa = cohen_kappa([per_annotator[a][k] for k in shared], [per_annotator[b][k] for k in shared])
                out.append(Agreement(a, b, field, len(shared), kappa))
    return out


def summarize(store: Store) -> ExportSummary:
    rows = list(store.current_judgements())
    labeled, conflicts, without_program = labeled_programs(rows)
    label_counts: dict[str, Counter] = defaultdict(Counter)
    by_verdict: dict[str, Counter] = {verdict: Counter() for verdict in TRIAGE_ORDER}
    for row in rows:
        label_counts[row.judgement.annotator][row.judgement.correct or "none"] += 1
        verdict = row.refinement.result.verdict
        if row.judgement.correct and verdict in by_verdict:
            by_verdict[verdict][row.judgement.correct] += 1
    return ExportSummary(
        judgements=len(rows),
        annotators=sorted(label_counts),
        labeled_programs=len(labeled),
        conflicts=conflicts,
        without_program=without_program,
        agreements=agreements(rows),
        label_counts=dict(label_counts),
        by_verdict={verdict: counts for verdict, counts in by_verdict.items() if counts},
    )


def write_csv(store: Store, fh: TextIO, tokenizer=None) -> int:
    """Every current judgement, one row each (`tokenizer` unused: a CSV holds no prompts); returns the rows written."""
    writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    written = 0
    for row in store.current_judgements():
        writer.writerow(csv_row(row))
        written += 1
    return written


def write_dpo(store: Store, fh: TextIO, tokenizer=None) -> int:
    return _write_jsonl(dpo_rows(labeled_programs(store.current_judgements())[0], tokenizer), fh)


def write_kto(store: Store, fh: TextIO, tokenizer=None) -> int:
    return _write_jsonl(kto_rows(labeled_programs(store.current_judgements())[0], tokenizer), fh)


def _write_jsonl(rows: Iterable[dict], fh: TextIO) -> int:
    written = 0
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written += 1
    return written


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format, as the page's buttons and the CLI's --format read it. `write(store, file,
    tokenizer)` writes the rows to an open text file and returns how many it wrote."""

    label: str  # the page's button
    suffix: str  # of the file written for the page
    contents: str  # what a row holds (the CLI's help)
    why_empty: str  # what an export with no rows lacked, and what to do about it
    write: Callable[[Store, TextIO, object], int]


# A new format: one write_* function and one entry here.
FORMATS: dict[str, ExportFormat] = {
    "dpo": ExportFormat(
        "DPO pairs (JSONL)",
        "jsonl",
        "{prompt, chosen, rejected}",
        "A DPO pair needs one question + draft with a program judged correct (yes) and another judged "
        "wrong (no): run another refinement of such an item and judge both programs.",
        write_dpo,
    ),
    "kto": ExportFormat(
        "KTO rows (JSONL)",
        "jsonl",
        "{prompt, completion, label}",
        "A KTO row needs a program judged yes or no (unsure and conflicting judgements are left out): "
        "judge some refinements.",
        write_kto,
    ),
    "csv": ExportFormat(
        "All judgements (CSV)", "csv", "every current judgement", "Nobody has judged a refinement yet.", write_csv
    ),
}


@dataclasses.dataclass
class ExportConfig:
    db: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "annotation database (default: $CAP_DB_PATH, /data/annotations.db on Spaces, else ./annotations.db)"
        },
    )
    format: str = dataclasses.field(
        default="dpo",
        metadata={
            "help": "; ".join(f"{name}: {fmt.contents}" for name, fmt in FORMATS.items()),
            "choices": tuple(FORMATS),
        },
    )
    output: str = dataclasses.field(default="", metadata={"help": "file to write, JSONL or CSV (required)"})
    tokenizer: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "local tokenizer folder: write prompts as its exact chat-template text "
            "instead of conversational messages"
        },
    )


def export(store: Store, fmt: str, output: str | os.PathLike, *, tokenizer=None) -> ExportSummary:
    """Write `fmt` (a name in FORMATS) to `output` atomically and return the summary."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    summary = summarize(store)
    summary.format = fmt
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            summary.rows_written = FORMATS[fmt].write(store, fh, tokenizer)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    summary.output = str(output)
    return summary
