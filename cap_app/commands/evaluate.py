"""`python -m cap_app eval`: how often refinement fixes (or breaks) drafts, per strategy.

    python -m cap_app eval --input data/gsm8k/model_drafts_dev.jsonl --draft-key 6b_finetuning --limit 20
    python -m cap_app eval --input drafts.jsonl --strategy greedy vote cot+cap --n 4 --report runs/eval.json
    python -m cap_app eval --input data/gsm8k/train.jsonl --draft-key none --limit 10   # no drafts: plain programs

Input: JSONL with `question`, a gold answer (`gold`, `ground_truth` or GSM8K's `answer` with
`#### N`), and the draft under `--draft-key` (text, or `{"solution": ...}` as in the drafts
file). Prints one table row per strategy (draft and refined accuracy, wrong->right and
right->wrong counts, answers missing, the programs' own accuracy and right->wrong before a draft's
answer is kept, drafts kept unconfirmed, tokens and seconds per item), then how well the verdict
flags wrong drafts (per verdict the items and the share of wrong drafts, and the AUROC of the
annotators' triage order and of the log-prob alone; cap_app/engine/triage.py), and writes a JSON report
with the summary and every item's answers, with each generated program's outcome (sandbox
status, error, answer, tokens, the model's raw text).

Resumable: each result is appended to `<report>.partial.jsonl` as it finishes, so an eval that was
killed (or whose server was lost) loses nothing; rerun the same command and it refines only the
items left. The sidecar is deleted once the report is written; one left by an eval with other
settings (input, draft keys, strategies, config or model) is refused rather than mixed in.

Exit status: 0 on success; 1 when the model or sandbox failed; 2 for unusable arguments or input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cap_app.backends import BackendConfig
from cap_app.commands.common import appended_records, fail, load_for_command, read_jsonl_items
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.engine.answers import answers_equal
from cap_app.engine.refine import RefineConfig
from cap_app.engine.results import RefinementResult
from cap_app.engine.strategies import STRATEGIES
from cap_app.engine.triage import flag_quality, format_flag_quality
from cap_app.models.loading import ModelConfig

HELP = "Evaluate refinement strategies on a JSONL file of drafts: accuracy table and JSON report."
MAX_REPORTED_TEXT = 4000  # characters of each candidate's raw model text kept in the report
COLUMNS = (
    "strategy",
    "items",
    "draft acc",
    "refined acc",
    "wrong->right",
    "right->wrong",
    "no answer",
    "program acc",
    "prog r->w",
    "unconfirmed",
    "tokens/item",
    "s/item",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="JSONL file of questions, gold answers and drafts")
    parser.add_argument(
        "--draft-key",
        nargs="+",
        default=["draft"],
        dest="draft_keys",
        help="field(s) holding the draft, e.g. 6b_finetuning in data/gsm8k/model_drafts_dev.jsonl; "
        "several keys evaluate every draft source and add a table row per source; "
        "'none' to refine without drafts (default: draft)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N usable items")
    parser.add_argument(
        "--strategy",
        nargs="+",
        choices=tuple(STRATEGIES),
        default=["greedy"],
        dest="strategies",
        help="one or more strategies to compare (default: greedy)",
    )
    parser.add_argument("--report", default="runs/eval_report.json", help="where to write the JSON report")
    add_dataclass_arguments(parser, ModelConfig)
    add_dataclass_arguments(parser, BackendConfig)
    add_dataclass_arguments(parser, RefineConfig, exclude=("strategy",))


def summarize(results) -> dict:
    """Accuracy and cost figures for one strategy's results (all with gold answers)."""
    count = len(results)
    program_right = [answers_equal(r.program_answer, r.gold) for r in results]

    def share(flags) -> float:
        return sum(flags) / count if count else 0.0

    return {
        "items": count,
        "draft_accuracy": share(r.draft_correct for r in results),
        "refined_accuracy": share(r.refined_correct for r in results),
        "wrong_to_right": sum(not r.draft_correct and r.refined_correct for r in results),
        "right_to_wrong": sum(r.draft_correct and not r.refined_correct for r in results),
        "no_answer": sum(r.verdict == "no_answer" for r in results),
        # the programs' own answers, before a draft's answer is kept (RefineConfig.override)
        "program_accuracy": share(program_right),
        "program_wrong_to_right": sum(not r.draft_correct and ok for r, ok in zip(results, program_right, strict=True)),
        "program_right_to_wrong": sum(r.draft_correct and not ok for r, ok in zip(results, program_right, strict=True)),
        "unconfirmed": sum(r.verdict == "unconfirmed" for r in results),
        # generations stopped by the token limit or the repetition stop, of all generations
        "cut_off": sum(c.finish in ("length", "repetition") for r in results for c in r.candidates),
        "generations": sum(len(r.candidates) for r in results),
        "tokens_per_item": sum(r.generated_tokens for r in results) / count if count else 0.0,
        "seconds_per_item": sum(r.timings_ms["total"] for r in results) / 1000 / count if count else 0.0,
        "verdict_flag": flag_quality(results),
    }


def candidate_outcome(candidate) -> dict:
    """What one generated program did, so a report shows why an item got no answer (a program
    cut at the token limit, one that printed nothing, a runtime error...) without a rerun."""
    execution = candidate.execution
    return {
        "status": execution.status,
        "error": execution.error,
        "answer": candidate.answer,
        "tokens": candidate.tokens,
        "finish": candidate.finish,
        "text": candidate.text[:MAX_REPORTED_TEXT],
    }


def _labelled(summary: dict[str, dict], by_draft_key: dict[str, dict[str, dict]] | None) -> list[tuple[str, dict]]:
    """(row label, figures): with several draft sources, one per source and strategy first."""
    labelled = [(f"{strategy} [{key}]", s) for key, per in (by_draft_key or {}).items() for strategy, s in per.items()]
    return labelled + [(strategy if not by_draft_key else f"{strategy} [all]", s) for strategy, s in summary.items()]


def format_flags(summary: dict[str, dict], by_draft_key: dict[str, dict[str, dict]] | None = None) -> str:
    """How well the verdict flags wrong drafts, one line per row of the table."""
    lines = ["verdict as a flag on wrong drafts (items, share of wrong drafts; AUROC of the triage order):"]
    return "\n".join(
        lines + [format_flag_quality(label, s["verdict_flag"]) for label, s in _labelled(summary, by_draft_key)]
    )


def format_table(summary: dict[str, dict], by_draft_key: dict[str, dict[str, dict]] | None = None) -> str:
    """One row per strategy; with several draft sources, one per source and strategy first."""
    rows = [COLUMNS]
    for strategy, s in _labelled(summary, by_draft_key):
        rows.append(
            (
                strategy,
                str(s["items"]),
                f"{s['draft_accuracy']:.1%}",
                f"{s['refined_accuracy']:.1%}",
                str(s["wrong_to_right"]),
                str(s["right_to_wrong"]),
                str(s["no_answer"]),
                f"{s['program_accuracy']:.1%}",
                str(s["program_right_to_wrong"]),
                str(s["unconfirmed"]),
                f"{s['tokens_per_item']:.1f}",
                f"{s['seconds_per_item']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    )


def _load_items(args) -> list[tuple[str, object]]:
    """(draft key, item) for the first --limit usable items of each draft key."""
    items = []
    for key in dict.fromkeys(args.draft_keys):
        count = 0
        for number, item, detail in read_jsonl_items(args.input, draft_key=key):
            if item is not None and item.gold is None:
                item, detail = None, "no gold answer (gold, ground_truth or answer)"
            if item is None:
                print(
                    f"{args.input}:{number}: skipped{f' ({key})' if len(args.draft_keys) > 1 else ''}: {detail}",
                    file=sys.stderr,
                )
                continue
            items.append((key, item))
            count += 1
            if args.limit is not None and count >= args.limit:
                break
    return items


def _resume(sidecar: Path, run: dict) -> dict[tuple, list] | None:
    """Results an interrupted eval with these settings left in the sidecar, by (strategy, draft key, question,
    draft), or None when the sidecar holds another eval's. A new sidecar starts with the settings line."""
    records = appended_records(sidecar)
    if not records:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps({"run": run}, ensure_ascii=False) + "\n", encoding="utf-8")
        return {}
    if records[0] != {"run": run}:
        return None
    done: dict[tuple, list] = {}
    for record in records[1:]:
        key = record.pop("draft_key")
        result = RefinementResult.from_dict(record)
        done.setdefault((result.strategy, key, result.question, result.draft), []).append(result)
    return done


def _strategy_results(keyed, config: RefineConfig, backend, done: dict[tuple, list], partial) -> list:
    """One strategy's result for every item, in input order: those in `done`, and the rest refined now,
    each appended to `partial` (the open sidecar) as it finishes so that a rerun after a crash keeps it."""
    from tqdm import tqdm

    from cap_app.engine.refine import refine_batch

    # a list per key: the same item may appear twice, and then has two results
    results = [(done.get((config.strategy, key, i.question, i.draft)) or [None]).pop(0) for key, i in keyed]
    todo = [index for index, result in enumerate(results) if result is None]
    refined = refine_batch([keyed[index][1] for index in todo], config, backend)
    progress = tqdm(
        refined,
        initial=len(results) - len(todo),
        total=len(results),
        desc=config.strategy,
        unit="item",
        file=sys.stderr,
    )
    for index, result in zip(todo, progress, strict=True):
        partial.write(json.dumps({"draft_key": keyed[index][0]} | result.to_dict(), ensure_ascii=False) + "\n")
        partial.flush()
        results[index] = result
    return results


def main(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        return fail(f"no such input file: {args.input}", 2)
    if args.limit is not None and args.limit < 1:
        return fail("--limit must be at least 1", 2)
    try:
        configs = {s: dataclass_from_args(RefineConfig, args, strategy=s) for s in dict.fromkeys(args.strategies)}
    except ValueError as error:
        return fail(error, 2)
    keyed = _load_items(args)
    if not keyed:
        return fail(f"no usable items in {args.input}", 2)

    backend = load_for_command(args)
    if backend is None:
        return 1
    run = {
        "input": args.input,
        "draft_keys": args.draft_keys,
        "model": backend.description,
        "backend": backend.name,
        "config": {s: dataclasses.asdict(c) for s, c in configs.items()},
    }
    sidecar = Path(f"{args.report}.partial.jsonl")
    done = _resume(sidecar, run)
    if done is None:
        return fail(
            f"{sidecar} holds the results of an eval with other settings (input, draft keys, strategies, config or "
            "model): delete it or choose another --report",
            2,
        )
    if done:
        print(f"resuming: {sum(map(len, done.values()))} results from {sidecar}", file=sys.stderr)
    try:
        with sidecar.open("a", encoding="utf-8") as partial:
            by_strategy = {s: _strategy_results(keyed, config, backend, done, partial) for s, config in configs.items()}
    except RuntimeError as error:  # the sandbox could not start (SandboxUnavailable), the server was lost...
        return fail(str(error).splitlines()[0], 1)
    summary, per_item = (
        {},
        [
            {"question": i.question, "draft_key": key, "gold": None, "draft_answer": None, "results": {}}
            for key, i in keyed
        ],
    )
    by_draft_key: dict[str, dict] = {}
    for strategy, results in by_strategy.items():
        summary[strategy] = summarize(results)
        if len(args.draft_keys) > 1:
            for key in dict.fromkeys(args.draft_keys):
                mine = [result for (k, _), result in zip(keyed, results, strict=True) if k == key]
                by_draft_key.setdefault(key, {})[strategy] = summarize(mine)
        for row, result in zip(per_item, results, strict=True):
            row.update(gold=result.gold, draft_answer=result.draft_answer)
            row["results"][strategy] = {
                "refined_answer": result.refined_answer,
                "refined_correct": result.refined_correct,
                "draft_correct": result.draft_correct,
                "verdict": result.verdict,
                "program_answer": result.program_answer,
                "draft_mistake": result.draft_mistake,
                "program": result.program,
                "votes": result.votes,
                "tokens": result.generated_tokens,
                "ms": result.timings_ms["total"],
                "candidates": [candidate_outcome(c) for c in result.candidates],
            }
    print(format_table(summary, by_draft_key))
    print(format_flags(summary, by_draft_key))
    report = run | {"summary": summary, "by_draft_key": by_draft_key, "items": per_item}
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sidecar.unlink()
    print(f"report: {report_path}", file=sys.stderr)
    return 0
