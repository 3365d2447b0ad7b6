"""`python -m cap_app refine`: refine one draft, or a JSONL file of them.

    python -m cap_app refine --question "Tom has 3 apples..." --draft "3 + 2 = 6. A: 6"
    python -m cap_app refine --question ... --draft ... --json          # RefinementResult as JSON
    python -m cap_app refine --input items.jsonl --output refined.jsonl --strategy vote --n 8
    python -m cap_app refine --backend llama.cpp --question ... --draft ...  # the offline default via llama.cpp
    CAP_API_KEY=... python -m cap_app refine --backend openai --base-url http://127.0.0.1:8000/v1 \
        --model NAME --concurrency 16 --batch-size 16 --input items.jsonl --output refined.jsonl

Batch input: one JSON object per line with `question`, `draft` and optionally `gold` (or
`ground_truth` / `answer`) and `id`; output: one RefinementResult JSON per line (plus `id`).
The batch is resumable: items whose (question, draft) already appear in the output are
skipped. A bad line is reported with its number and skipped.

Exit status: 0 on success; 1 when the model or sandbox failed or some input lines were bad;
2 for unusable arguments or input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cap_app.backends import BackendConfig
from cap_app.commands.common import appended_records, fail, load_for_command, read_jsonl_items
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.engine.refine import RefineConfig
from cap_app.engine.strategies import STRATEGIES
from cap_app.models.loading import ModelConfig

HELP = "Refine a chain-of-thought draft with a program: one (--question/--draft) or a JSONL batch (--input/--output)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    single = parser.add_argument_group("one draft")
    single.add_argument("--question", help="the math question")
    single.add_argument("--draft", default="", help="the chain-of-thought draft to check (may be empty)")
    single.add_argument("--gold", help="the correct answer, if known (adds right/wrong to the result)")
    single.add_argument("--json", action="store_true", help="print the result as one JSON object")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--input", help="JSONL file of {question, draft[, gold, id]} objects")
    batch.add_argument("--output", help="JSONL file to append results to (resumable)")
    add_dataclass_arguments(parser, ModelConfig)
    add_dataclass_arguments(parser, BackendConfig)
    add_dataclass_arguments(parser, RefineConfig)


def format_result(result) -> str:
    """A readable summary of a RefinementResult."""
    lines = [f"draft answer:   {result.draft_answer if result.draft_answer is not None else '(none found)'}"]
    for index, candidate in enumerate(result.candidates):
        marker = " (chosen)" if index == result.chosen and len(result.candidates) > 1 else ""
        lines.append(f"program {index + 1}{marker}:")
        lines += ["    " + line for line in candidate.program.splitlines()]
        execution = candidate.execution
        if execution.ok:
            outcome = "printed no answer" if execution.answer is None else f"answer {execution.answer}"
        else:
            outcome = execution.error or execution.status
        if candidate.cut_off and candidate.answer is None:
            outcome += f" (the program was {candidate.cut_off})"
        lines.append(f"  -> {execution.status} in {execution.duration_ms:.0f} ms: {outcome}")
    if len(result.votes) > 1 or STRATEGIES[result.strategy].samples:
        lines.append("votes:          " + (", ".join(f"{a} x{n}" for a, n in result.votes.items()) or "(none)"))
    lines.append(f"program answer: {result.program_answer if result.program_answer is not None else '(none)'}")
    lines.append(f"refined answer: {result.refined_answer if result.refined_answer is not None else '(none)'}")
    lines.append(f"verdict:        {result.verdict.replace('_', ' ')}")
    if result.draft_mistake:
        lines.append(f"draft mistake:  {result.draft_mistake}")
    if result.gold is not None:
        lines.append(
            f"gold answer:    {result.gold} (draft {'right' if result.draft_correct else 'wrong'}, "
            f"refined {'right' if result.refined_correct else 'wrong'})"
        )
    lines.append(f"model: {result.model}; {result.generated_tokens} tokens, {result.timings_ms['total'] / 1000:.1f} s")
    lines += [f"note: {note}" for note in result.notes]  # e.g. the token budget lowered to fit the context
    return "\n".join(lines)


def _done_keys(path: Path) -> set[tuple[str, str]]:
    """(question, draft) of results already in the output."""
    keys = set()
    for record in appended_records(path):
        try:
            keys.add((record["question"], record["draft"]))
        except (KeyError, TypeError):
            continue
    return keys


def _run_batch(args, config: RefineConfig, backend) -> int:
    from tqdm import tqdm

    from cap_app.engine.refine import refine_batch

    output = Path(args.output)
    done = _done_keys(output)
    todo, ids, bad, skipped = [], [], 0, 0
    for number, item, detail in read_jsonl_items(args.input):
        if item is None:
            print(f"{args.input}:{number}: skipped: {detail}", file=sys.stderr)
            bad += 1
        elif (item.question, item.draft) in done:
            skipped += 1
        else:
            done.add((item.question, item.draft))
            todo.append(item)
            ids.append(detail.get("id"))
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(output, "a", encoding="utf-8") as out,
        tqdm(total=len(todo), desc="refine", unit="item", file=sys.stderr) as progress,
    ):
        for item_id, result in zip(ids, refine_batch(todo, config, backend), strict=True):
            record = result.to_dict() | ({"id": item_id} if item_id is not None else {})
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            progress.update()
    print(f"refined {len(todo)}, already done {skipped}, bad lines {bad} -> {output}", file=sys.stderr)
    return 1 if bad else 0


def main(args: argparse.Namespace) -> int:
    batch = args.input is not None or args.output is not None
    if batch and (args.input is None or args.output is None):
        return fail("batch mode needs both --input and --output", 2)
    if not batch and args.question is None:
        return fail("give --question (and --draft), or --input and --output", 2)
    if batch and not Path(args.input).is_file():
        return fail(f"no such input file: {args.input}", 2)
    try:
        config = dataclass_from_args(RefineConfig, args)
    except ValueError as error:
        return fail(error, 2)

    from cap_app.engine.inputs import InputError, RefineItem

    item = None
    if not batch:
        try:
            item = RefineItem(args.question, args.draft, args.gold)
        except InputError as error:
            return fail(error, 2)
    backend = load_for_command(args)
    if backend is None:
        return 1
    try:
        if batch:
            return _run_batch(args, config, backend)
        result = _refine_one(item, args, config, backend)
    except RuntimeError as error:  # the sandbox could not start (SandboxUnavailable) and the like
        return fail(str(error).splitlines()[0], 1)
    print(json.dumps(result.to_dict(), ensure_ascii=False) if args.json else format_result(result))
    return 0


def _refine_one(item, args, config: RefineConfig, backend):
    """Refine the single draft; on a terminal, show the program on stderr as it is written."""
    from cap_app.engine.refine import refine_stream

    live = sys.stderr.isatty() and not args.json
    for event in refine_stream(item, config=config, backend=backend):
        if event.kind == "token" and live:
            sys.stderr.write(event.text)
            sys.stderr.flush()
        elif event.kind == "program" and live:
            sys.stderr.write("\n")
        elif event.kind == "done":
            return event.result
