"""Generation backends side by side on the offline default (SmolLM2-135M-Instruct + the CaP adapter):

1. single-stream tokens/s, llama.cpp (the q8_0 GGUF export) vs transformers (merged float32),
   same CaP prompt, greedy, through each backend's `generate_stream` (goal: >= 5x);
2. `vote` with N=8 on one item, wall time of the whole refinement, sandbox included (goal: >= 3x faster),
   the mean over `--vote-items` dev items each new to both backends;
   llama.cpp with its default pool of contexts (`default_contexts`: $CAP_LLAMA_CONTEXTS, else 2 on 2 CPUs);
3. batch refinement items/s: the `openai` backend against a local `python -m llama_cpp.server`
   (4 requests in flight) vs in-process llama.cpp vs in-process transformers (report; and the
   share of time in the sandbox, which must not be the bottleneck);
4. cold start of the offline default with llama.cpp from the caches: process launch to the first
   streamed token (goal: <= 2 s).

    .venv/bin/python -m benchmarks.backend_bench                 # ~4 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.backend_bench --repeats 1 --items 4

Prints a table and writes runs/bench/backends.json. Rates alternate which backend goes first and
take the median; wall-clock, on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import DRAFTS_DEV, ROOT, write_json

COLD_START = (
    "import sys, time\n"
    "from cap_app.backends import BackendConfig, get_backend\n"
    "from cap_app.backends.base import GenerationConfig\n"
    "from cap_app.models.loading import ModelConfig\n"
    "from cap_app.engine.prompts import build_messages\n"
    "backend = get_backend(ModelConfig(), BackendConfig(backend='llama.cpp')); ready = time.time()\n"
    "chunk = next(iter(backend.generate_stream([build_messages('What is 2 + 3?', 'A: 5')], GenerationConfig())))\n"
    "print(ready, time.time(), flush=True)\n"
)


def _items(count: int):
    from cap_app.engine.inputs import RefineItem

    rows = [json.loads(line) for line in DRAFTS_DEV.read_text().splitlines()]
    return [RefineItem(r["question"], r["6b_finetuning"]["solution"]) for r in rows[:count]]


def single_stream(backends: dict, conversation, tokens: int, repeats: int) -> dict:
    """Median tokens/s of each backend's stream, greedy, the stop rules off (EOS still ends a program)."""
    from cap_app.backends.base import GenerationConfig

    config = GenerationConfig(max_new_tokens=tokens, stop_at_program_end=False, stop_on_repetition=False)
    rates: dict[str, list[float]] = {name: [] for name in backends}
    for repeat in range(repeats):
        for name in list(backends) if repeat % 2 == 0 else list(backends)[::-1]:
            started = time.perf_counter()
            *_, last = backends[name].generate_stream([conversation], config)
            generation = last.generations[0][0]
            rates[name].append(generation.new_tokens / (time.perf_counter() - started))
    return {name: {"tok_s": statistics.median(r), "runs": r} for name, r in rates.items()}


def vote_wall_time(backends: dict, items) -> dict:
    """Seconds for one `vote` refinement with N=8 (generation and sandbox) of each item, per backend.
    Each item is new to both backends (a backend keeps the last prompt it evaluated, so repeating one
    item would time a vote without its prompt); the first item only warms them up (first-call costs
    aside). Alternates which backend goes first."""
    from cap_app.engine.refine import RefineConfig, refine

    config = RefineConfig(strategy="vote", n=8, max_new_tokens=256, trace=False)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for index, item in enumerate(items):
        for name in list(backends) if index % 2 == 0 else list(backends)[::-1]:
            started = time.perf_counter()
            refine(item.question, item.draft, config=config, model=backends[name])
            if index:
                times[name].append(time.perf_counter() - started)
    return {name: {"seconds": sum(t) / len(t), "runs": t} for name, t in times.items()}


def batch_rate(backend, items, batch_size: int) -> dict:
    """Items/s of a greedy batch refinement, and the share of its time spent in the sandbox."""
    from cap_app.engine.refine import RefineConfig, refine_batch

    started = time.perf_counter()
    results = list(refine_batch(items, RefineConfig(max_new_tokens=256, trace=False, batch_size=batch_size), backend))
    wall = time.perf_counter() - started
    sandbox = sum(r.timings_ms["execute"] for r in results) / 1000
    return {"items": len(items), "seconds": wall, "items_s": len(items) / wall, "sandbox_share": sandbox / wall}


def served_batch_rate(model_file: Path, items, concurrency: int) -> dict:
    """`batch_rate` through the openai backend against a llama_cpp.server started for it."""
    import httpx

    from cap_app.backends.openai import OpenAIBackend

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from cap_app.backends.llama_cpp import THREADS

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cap_app.backends.llama_server",
            "--model",
            str(model_file),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--n_ctx",
            "4096",
            "--interrupt_requests",
            "false",
            "--n_threads",
            str(THREADS),
            "--n_threads_batch",
            str(THREADS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            try:
                httpx.get(f"{url}/models")
                break
            except httpx.TransportError:
                time.sleep(0.3)
        backend = OpenAIBackend(url, None, api_key=None, concurrency=concurrency, timeout_s=120, retries=2)
        return batch_rate(backend, items, batch_size=concurrency)
    finally:
        server.kill()
        server.wait()


def cold_start(repeats: int) -> dict:
    """A fresh process: launch to backend ready and to the first streamed token, from the caches."""
    runs = []
    for _ in range(repeats):
        launched = time.time()
        out = subprocess.run(
            [sys.executable, "-c", COLD_START],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
        )
        ready, first = (float(x) for x in out.stdout.split())
        runs.append({"ready_s": ready - launched, "first_token_s": first - launched})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="most tokens per single-stream generation")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the single-stream and cold-start runs")
    parser.add_argument("--items", type=int, default=8, help="items in the batch refinement runs")
    parser.add_argument(
        "--vote-items", type=int, default=5, help="items of the vote runs (each new to both backends) after a warm-up"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="threads of the transformers backend (default: torch's "
        "own, one per core; on a CPU shared with another busy process, 1 is far faster)",
    )
    parser.add_argument("--output", default="runs/bench/backends.json")
    args = parser.parse_args(argv)

    from cap_app.backends import BackendConfig, get_backend
    from cap_app.backends.llama_cpp import THREADS
    from cap_app.engine.prompts import build_messages
    from cap_app.models.gguf import cached_export
    from cap_app.models.loading import DEFAULT_ADAPTER_DIR, ModelConfig, default_gguf_path, quiet_library_output

    quiet_library_output()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    backends = {
        "llama.cpp": get_backend(ModelConfig(), BackendConfig(backend="llama.cpp")),  # exports once
        "transformers": get_backend(ModelConfig(), BackendConfig(backend="transformers")),
    }
    items = _items(args.items)
    conversation = build_messages(items[0].question, items[0].draft)
    single_stream(backends, conversation, 8, 1)  # warm-up: first-call costs aside
    machine = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch_threads": args.torch_threads,
        "llama_contexts": backends["llama.cpp"].concurrency,
        "llama_threads_per_context": THREADS,
    }
    figures = {
        "machine": machine,
        "single_stream": single_stream(backends, conversation, args.tokens, args.repeats),
        "vote_n8": vote_wall_time(backends, _items(args.vote_items + 1)),
        "batch": {
            "openai (llama_cpp.server, 4 in flight)": served_batch_rate(
                cached_export(default_gguf_path(), str(DEFAULT_ADAPTER_DIR)), items, 4
            ),
            **{name: batch_rate(backend, items, 8) for name, backend in backends.items()},
        },
        "cold_start": cold_start(args.repeats),
    }
    s, v, c = figures["single_stream"], figures["vote_n8"], figures["cold_start"]
    print(
        f"machine: {machine['cpus']} CPUs, load average before run {machine['load_average'][0]:.1f}; "
        f"llama.cpp: {machine['llama_contexts']} contexts x {THREADS} threads"
    )
    print("| measure | llama.cpp | transformers | ratio | goal |\n|---|---|---|---|---|")
    print(
        f"| single stream, tokens/s | {s['llama.cpp']['tok_s']:.1f} | {s['transformers']['tok_s']:.1f} | "
        f"{s['llama.cpp']['tok_s'] / s['transformers']['tok_s']:.1f}x | >= 5x |"
    )
    print(
        f"| vote N=8, mean of {args.vote_items} items, s | {v['llama.cpp']['seconds']:.1f} | "
        f"{v['transformers']['seconds']:.1f} | "
        f"{v['transformers']['seconds'] / v['llama.cpp']['seconds']:.1f}x | >= 3x |"
    )
    print(
        f"| cold start to first token (backend ready) | {c['first_token_s']:.2f} s ({c['ready_s']:.2f} s) "
        "| | | <= 2 s |"
    )
    print("\n| batch refinement, greedy | items/s | sandbox share of wall time |\n|---|---|---|")
    for name, b in figures["batch"].items():
        print(
            f"| {name} | {b['items_s']:.2f} ({b['items']} items in {b['seconds']:.0f} s) | {b['sandbox_share']:.0%} |"
        )
    write_json(args.output, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
