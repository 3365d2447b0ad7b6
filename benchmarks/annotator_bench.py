"""Annotation store: loading a large batch (streamed, not read whole) and saving judgements.

    .venv/bin/python -m benchmarks.annotator_bench                    # 100,000 rows
    .venv/bin/python -m benchmarks.annotator_bench --rows 20000 --judgements 500 --json runs/annotator_bench.json

A batch file is written from the 200 dev drafts (repeated with numbered questions, so every row
is a distinct item), then loaded into a fresh database. Measured: load time and rows/s, the
peak Python heap during the load against the file size (streaming keeps it flat), and the
latency of one judgement (a committed, fsynced transaction), sequential and with several
threads writing at once. Goals (issue 6): the peak heap stays flat (< 16 MiB) whatever the file
size; a judgement is on disk in < 50 ms at p95. Figures for this machine: benchmarks/README.md.

    .venv/bin/python -m benchmarks.annotator_bench --served --annotators 6 --seconds 60

`--served` measures what a team meets instead: a real `python -m cap_app serve` with accounts (a
users file), N annotators each signed in through gradio_client (the page's own API) on the same
machine, each uploading the batch, then judging item after item (one field per call, as the page
sends them) and stepping on. Measured: each judgement call's round trip, p50/p95, and judgements
per second. Goal (issue 24): p95 <= 1 s at 6 annotators on 2 cores, clients included.
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
from cap_app.annotate.item_files import load_batch
from cap_app.annotate.store import Store
from cap_app.engine.results import Candidate, RefinementResult
from cap_app.sandbox.result import ExecResult


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


def served_figures(annotators: int, seconds: float, items: int) -> dict:
    """Judge through a served app with `annotators` signed-in clients for `seconds`."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from argon2 import PasswordHasher
    from gradio_client import Client, handle_file

    password = "benchmark password"
    with tempfile.TemporaryDirectory(prefix="cap-annotator-served-") as tmp:
        tmp = Path(tmp)
        hashed = PasswordHasher().hash(password)
        names = [f"annotator{i}" for i in range(annotators)]
        users = {name: {"role": "annotator", "hash": hashed} for name in names}
        (tmp / "users.json").write_text(json.dumps({"version": 1, "users": users}))
        batch = tmp / "batch.jsonl"
        result = a_refinement()
        with open(batch, "w", encoding="utf-8") as out:
            for i in range(items):
                row = result.to_dict() | {"question": f"[{i}] How many eggs?", "draft": "16 - 3 = 13\nA: 13"}
                out.write(json.dumps(row) + "\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **os.environ,
            "CAP_USERS": str(tmp / "users.json"),
            "CAP_PREPARE": "0",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        }
        command = [sys.executable, "-m", "cap_app", "serve", "--port", str(port), "--db", str(tmp / "a.db")]
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.5)
            latencies: list[float] = []
            lock = threading.Lock()
            start = threading.Barrier(annotators + 1)
            stop = threading.Event()

            def annotate(name: str) -> None:
                client = Client(url, auth=(name, password), verbose=False)
                client.predict(handle_file(str(batch)), "", "draft", api_name="/annotate_load_file")
                start.wait()
                count = 0
                while not stop.is_set():
                    field, value = ("correct", ("yes", "no")[count % 2]) if count % 2 == 0 else ("note", f"n{count}")
                    began = time.perf_counter()
                    status = client.predict(value, api_name=f"/annotate_record_judgement_{field}")[0]
                    took = time.perf_counter() - began
                    if "Saved" not in status:
                        raise RuntimeError(status)
                    with lock:
                        latencies.append(took)
                    if field == "note":
                        client.predict(api_name="/annotate_step_1")
                    count += 1

            threads = [threading.Thread(target=annotate, args=(name,)) for name in names]
            for thread in threads:
                thread.start()
            start.wait()
            began = time.perf_counter()
            time.sleep(seconds)
            stop.set()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return {
        "annotators": annotators,
        "seconds": round(elapsed, 1),
        "judgements": len(latencies),
        "judge_p50_s": round(percentile(latencies, 50), 3),
        "judge_p95_s": round(percentile(latencies, 95), 3),
        "judgements_per_s": round(len(latencies) / elapsed, 1),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the batch file")
    parser.add_argument("--judgements", type=int, default=300, help="judgements per writer")
    parser.add_argument("--writers", type=int, default=4, help="threads judging at once in the concurrent run")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--served", action="store_true", help="judge through a served app with signed-in clients")
    parser.add_argument("--annotators", type=int, default=6, help="--served: annotators judging at once")
    parser.add_argument("--seconds", type=float, default=60, help="--served: how long they judge")
    parser.add_argument("--items", type=int, default=400, help="--served: items in the batch")
    args = parser.parse_args()
    if args.served:
        figures = served_figures(args.annotators, args.seconds, args.items)
        print(json.dumps(figures, indent=2))
        if args.json:
            write_json(args.json, figures)
        return

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
