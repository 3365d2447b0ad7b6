"""Annotation store: loading a large batch (streamed, not read whole) and saving judgements.

    .venv/bin/python -m benchmarks.annotator_bench                    # 100,000 rows
    .venv/bin/python -m benchmarks.annotator_bench --rows 20000 --judgements 500 --json runs/annotator_bench.json

A batch file is written from the 200 dev drafts (repeated with numbered questions, so every row
is a distinct item), then loaded into a fresh database. Measured: load time and rows/s, the
peak Python heap during the load against the file size (streaming keeps it flat), and the
latency of one judgement (a committed, fsynced transaction), sequential and with several
threads writing at once. Goals (issue 6): the peak heap stays flat (< 16 MiB) whatever the file
size; a judgement is on disk in < 50 ms at p95. Figures for this machine: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from benchmarks.common import DRAFTS_DEV, write_json
from cap_app.item_files import load_batch
from cap_app.results import Candidate, RefinementResult
from cap_app.sandbox.result import ExecResult
from cap_app.store import Store


def write_batch(path: Path, rows: int) -> None:
    sources = [json.loads(line) for line in DRAFTS_DEV.read_text(encoding="utf-8").splitlines()]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            row = dict(sources[i % len(sources)])
            row["question"] = f"[{i}] {row['question']}"
            out.write(json.dumps(row) + "\n")


def a_refinement() -> RefinementResult:
    execution = ExecResult("ok", stdout="18\n", answer="18", duration_ms=3.0)
    candidate = Candidate(text="```python\nprint(18)\n```", program="print(18)", execution=execution, answer="18")
    return RefinementResult(
        question="q",
        draft="d",
        draft_answer="26",
        strategy="greedy",
        candidates=[candidate],
        chosen=0,
        refined_answer="18",
        votes={"18": 1},
        verdict="disagrees",
    )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def judge_latencies(store: Store, refinement_ids: list[int], annotator: str) -> list[float]:
    latencies = []
    for i, refinement_id in enumerate(refinement_ids):
        began = time.perf_counter()
        store.judge(refinement_id, annotator, correct=("yes", "no")[i % 2], note=f"note {i}")
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the batch file")
    parser.add_argument("--judgements", type=int, default=300, help="judgements per writer")
    parser.add_argument("--writers", type=int, default=4, help="threads judging at once in the concurrent run")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cap-annotator-bench-") as tmp:
        batch_path = Path(tmp) / "batch.jsonl"
        write_batch(batch_path, args.rows)
        store = Store(Path(tmp) / "annotations.db")
        began = time.perf_counter()
        report = load_batch(store, batch_path, draft_key="175b_verification")
        load_s = time.perf_counter() - began
        tracemalloc.start()  # a second load into another database, for memory only (tracing is slow)
        load_batch(Store(Path(tmp) / "memory.db"), batch_path, draft_key="175b_verification")
        peak_heap = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        # judgements are of refinements: attach one to each item that will be judged
        wanted = args.judgements * (args.writers + 1)
        refinement_ids = [
            store.add_refinement(store.item_at(report.batch.id, p).id, a_refinement(), "file").id
            for p in range(min(wanted, report.batch.item_count))
        ]
        sequential = judge_latencies(store, refinement_ids[: args.judgements], "solo")
        concurrent: list[float] = []
        lock = threading.Lock()

        def writer(k: int) -> None:
            ids = refinement_ids[(k + 1) * args.judgements : (k + 2) * args.judgements] or refinement_ids
            latencies = judge_latencies(store, ids[: args.judgements], f"writer{k}")
            with lock:
                concurrent.extend(latencies)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(args.writers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_s = time.perf_counter() - began
        figures = {
            "rows": args.rows,
            "file_mb": round(batch_path.stat().st_size / 2**20, 1),
            "load_s": round(load_s, 2),
            "rows_per_s": round(args.rows / load_s),
            "peak_heap_mb": round(peak_heap / 2**20, 2),
            "peak_heap_vs_file": round(peak_heap / batch_path.stat().st_size, 4),
            "judge_p50_ms": round(percentile(sequential, 50), 2),
            "judge_p95_ms": round(percentile(sequential, 95), 2),
            f"judge_p95_ms_{args.writers}_writers": round(percentile(concurrent, 95), 2),
            f"judgements_per_s_{args.writers}_writers": round(len(concurrent) / concurrent_s),
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
