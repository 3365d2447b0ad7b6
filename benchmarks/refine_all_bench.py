"""Refine all: a batch refined in the background, and what a Refine tab visitor meets meanwhile.

    .venv/bin/python -m benchmarks.refine_all_bench --items 200
    .venv/bin/python -m benchmarks.refine_all_bench --items 20 --probes 3 --json runs/refine_all_bench.json

The batch is the first N rows of data/gsm8k/model_drafts_dev.jsonl, the four GPT-3 draft sources
interleaved (row i's draft is source i mod 4: 6b_finetuning, 6b_verification, 175b_finetuning,
175b_verification), loaded into a fresh database as the Annotate tab loads a file. The job runs
as the page starts it (cap_app.annotate.batch_refinement.start, an admin, the offline default
backend from `get_backend(ModelConfig())`, greedy), in its worker thread.

Measured:
- items/s of the job over the whole batch (its own figure, `progress().items_per_s`), and its
  wall time, with the interactive probes below taking their turns;
- the Refine tab's greedy latency: `--probes` interactive refinements (the engine call the Refine
  handler makes, `refine_stream`, inside `priority.interactive()` as the handler runs it) of other
  dev questions, first with the machine idle, then while the job runs (one every few seconds),
  each from the call to its result: p50 and p95 of each.
The model is loaded and warmed once before anything is timed. The 1-minute load average before
and after is printed with the figures: anything else on the machine shows there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import DRAFTS_DEV, write_json

SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="rows of the dev drafts in the batch (at most 200)")
    parser.add_argument("--probes", type=int, default=8, help="interactive refinements, idle and while the job runs")
    parser.add_argument("--gap-s", type=float, default=4.0, help="seconds between interactive refinements in the job")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser


def write_batch(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for i, row in enumerate(rows):
            draft = row[SOURCES[i % len(SOURCES)]]["solution"]
            out.write(json.dumps({"question": row["question"], "draft": draft, "ground_truth": row["ground_truth"]}))
            out.write("\n")


def interactive_latency(item, backend) -> float:
    """One greedy refinement as the Refine tab runs it: gated as interactive, through refine_stream."""
    from cap_app.backends import priority
    from cap_app.engine.refine import RefineConfig, refine_stream

    began = time.perf_counter()
    with priority.interactive():
        events = list(refine_stream(item, config=RefineConfig(), backend=backend))
    assert events[-1].kind == "done", events[-1]
    return time.perf_counter() - began


def percentiles(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_s": round(statistics.median(ordered), 2), "p95_s": round(p95, 2), "n": len(ordered)}


def main(args: argparse.Namespace) -> dict:
    from cap_app.annotate import batch_refinement
    from cap_app.annotate.accounts import Identity
    from cap_app.annotate.item_files import load_batch
    from cap_app.annotate.store import Store
    from cap_app.backends import BackendConfig, get_backend
    from cap_app.engine.inputs import RefineItem
    from cap_app.models.loading import ModelConfig, quiet_library_output

    quiet_library_output()
    load_before = os.getloadavg()[0]  # the benchmark says what else used the 2 cores
    rows = [json.loads(line) for line in DRAFTS_DEV.read_text(encoding="utf-8").splitlines()]
    count = min(args.items, len(rows))
    # the probes: other questions of the dev file (from its end), each with its first source's draft
    probes = [RefineItem(row["question"], row[SOURCES[0]]["solution"]) for row in rows[::-1][: args.probes]]
    folder = Path(tempfile.mkdtemp(prefix="refine-all-bench-"))
    write_batch(folder / "batch.jsonl", rows[:count])
    store = Store(folder / "annotations.db")
    batch_id = load_batch(store, folder / "batch.jsonl").batch.id

    began = time.perf_counter()
    backend = get_backend(ModelConfig(), BackendConfig())
    interactive_latency(probes[0], backend)  # warm: the first generation pays one-time costs
    load_s = time.perf_counter() - began
    idle = [interactive_latency(item, backend) for item in probes]

    admin = Identity("bench", "admin", "api")
    began = time.perf_counter()
    batch_refinement.start(store, batch_id, admin, batch_refinement.JobSettings())  # the settings' own backend
    busy = []
    for item in probes:
        time.sleep(args.gap_s)
        if batch_refinement.progress(store, batch_id).state != "running":
            break
        busy.append(interactive_latency(item, backend))
    batch_refinement.wait(batch_id)
    wall_s = time.perf_counter() - began
    progress = batch_refinement.progress(store, batch_id)
    figures = {
        "items": count,
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "backend": backend.description,
        "job_state": progress.state,
        "job_error": progress.error,
        "refined": progress.done,
        "items_per_s": round(progress.items_per_s or 0.0, 3),
        "job_wall_s": round(wall_s, 1),
        "model_load_and_warm_s": round(load_s, 1),
        "interactive_idle": percentiles(idle),
        "interactive_during_job": percentiles(busy) if busy else None,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main(make_parser().parse_args())
