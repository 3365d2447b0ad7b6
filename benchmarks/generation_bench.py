"""Generation speed on the offline default model (SmolLM2-135M-Instruct), three goals:

1. streaming costs nothing: tokens/s of `generate_stream` vs a bare `model.generate` on the same
   prompt (goal: ratio >= 0.95);
2. batching pays: N=8 samples in one batch vs 8 one after another (goal: >= 3x faster on CPU);
3. a cold start with the caches is quick: a fresh process loads the offline default, base model
   and CaP adapter, from the conversion and merge caches (goal <= 5 s); also the base alone.

    .venv/bin/python -m benchmarks.generation_bench            # all three, ~3 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.generation_bench --tokens 64 --repeats 1

Prints a table and writes runs/bench/generation.json. The first run converts the GGUF and merges
the adapter into the cache (~30 s), outside the timings. Timings are wall-clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from benchmarks.common import DRAFTS_DEV, write_json

COLD_START = (
    "import sys, time; t0 = time.perf_counter()\n"
    "from cap_app.models.loading import ModelConfig, load_model, quiet_library_output\n"
    "quiet_library_output(); t1 = time.perf_counter()\n"
    "load_model(ModelConfig(adapter=sys.argv[1]))\n"
    "t2 = time.perf_counter(); print(t1 - t0, t2 - t1, time.time(), flush=True)\n"
)


def _prompt(tokenizer) -> str:
    from cap_app.engine.prompts import format_prompt

    row = json.loads(DRAFTS_DEV.read_text().splitlines()[0])
    return format_prompt(tokenizer, row["question"], row["6b_finetuning"]["solution"])


def streaming_vs_bare(loaded, prompt: str, tokens: int, repeats: int) -> dict:
    """Median tokens/s of both ways to generate `tokens` greedy tokens, alternating which goes first.

    The bare call gets the same generation settings, so the ratio isolates what streaming adds
    (thread, queue, incremental decoding, the stop and log-prob hooks)."""
    from transformers import GenerationConfig as HFGenerationConfig

    from cap_app.backends.base import GenerationConfig
    from cap_app.backends.transformers import generate_stream

    inputs = loaded.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=tokens, stop_at_program_end=False, stop_on_repetition=False)
    bare_config = HFGenerationConfig(
        max_new_tokens=tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=loaded.tokenizer.pad_token_id,
        eos_token_id=loaded.tokenizer.eos_token_id,
    )
    bare, streamed = [], []

    def run_bare():
        # In a worker thread like generate_stream's: on a busy machine torch ops in the main thread
        # can run several times slower (see benchmarks/README.md), which would flatter streaming.
        out = []
        started = time.perf_counter()
        worker = threading.Thread(
            target=lambda: out.append(loaded.model.generate(**inputs, generation_config=bare_config))
        )
        worker.start()
        worker.join()
        bare.append((out[0].shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - started))

    def run_stream():
        nonlocal first_text_s
        started = time.perf_counter()
        for chunk in generate_stream(loaded, [prompt], config):
            if first_text_s is None:
                first_text_s = time.perf_counter() - started
            if chunk.generations:
                generated = chunk.generations[0][0].new_tokens
        streamed.append(generated / (time.perf_counter() - started))

    first_text_s = None
    for repeat in range(repeats):
        for run in (run_bare, run_stream) if repeat % 2 == 0 else (run_stream, run_bare):
            run()
    bare_rate, stream_rate = statistics.median(bare), statistics.median(streamed)
    return {
        "tokens": tokens,
        "bare_tok_s": bare_rate,
        "stream_tok_s": stream_rate,
        "ratio": stream_rate / bare_rate,
        "first_text_s": first_text_s,
    }


def batched_vs_sequential(loaded, prompt: str, tokens: int, n: int = 8) -> dict:
    """N sampled programs in one batch vs the same N one at a time (same lengths: no early stop)."""
    from cap_app.backends.base import GenerationConfig
    from cap_app.backends.transformers import generate_batch

    config = GenerationConfig(
        max_new_tokens=tokens, temperature=0.7, n=n, batch_size=n, stop_at_program_end=False, stop_on_repetition=False
    )
    started = time.perf_counter()
    [batch] = generate_batch(loaded, [prompt], config)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    single = [
        generate_batch(
            loaded,
            [prompt],
            GenerationConfig(
                max_new_tokens=tokens, temperature=0.7, seed=seed, stop_at_program_end=False, stop_on_repetition=False
            ),
        )[0][0]
        for seed in range(n)
    ]
    sequential_s = time.perf_counter() - started
    return {
        "n": n,
        "tokens_each": tokens,
        "batched_s": batched_s,
        "sequential_s": sequential_s,
        "speedup": sequential_s / batched_s,
        "batched_tok_s": sum(g.new_tokens for g in batch) / batched_s,
        "sequential_tok_s": sum(g.new_tokens for g in single) / sequential_s,
    }


def cold_start(repeats: int, adapter: str | None) -> dict:
    """A fresh Python process: from its launch until the model is ready (from the caches), split
    into imports and `load_model`; the process's exit is not part of it. `adapter` None is the
    offline default's own adapter."""
    runs = []
    for _ in range(repeats):
        launched = time.time()
        out = subprocess.run(
            [sys.executable, "-c", COLD_START, adapter or ""],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"HF_HUB_OFFLINE": "1"},
        )
        imports, load, ready_at = (float(x) for x in out.stdout.split())
        runs.append({"ready_s": ready_at - launched, "imports_s": imports, "load_model_s": load})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the streaming and cold-start runs")
    parser.add_argument("--output", default="runs/bench/generation.json")
    args = parser.parse_args(argv)

    import torch

    from cap_app.models.loading import ModelConfig, load_model, quiet_library_output

    quiet_library_output()
    load_model(ModelConfig())  # fill the conversion and merge caches: their one-off cost is not measured
    loaded = load_model(ModelConfig(adapter="none"))
    prompt = _prompt(loaded.tokenizer)
    from cap_app.backends.base import GenerationConfig
    from cap_app.backends.transformers import generate_batch

    generate_batch(loaded, [prompt], GenerationConfig(max_new_tokens=8))  # warm-up: first-call costs aside
    figures = {
        "machine": {"cpu_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "streaming": streaming_vs_bare(loaded, prompt, args.tokens, args.repeats),
        "batching": batched_vs_sequential(loaded, prompt, args.tokens // 2),
        "cold_start": cold_start(args.repeats, adapter=None),
        "cold_start_base_only": cold_start(args.repeats, adapter="none"),
    }
    s, b = figures["streaming"], figures["batching"]
    print(
        f"machine: {figures['machine']['cpu_threads']} torch threads, load average before run "
        f"{figures['machine']['load_average'][0]:.1f}"
    )
    print("| measure | figure | goal |\n|---|---|---|")
    print(
        f"| streaming vs bare generate ({s['tokens']} tokens) | {s['stream_tok_s']:.1f} vs {s['bare_tok_s']:.1f} "
        f"tok/s = {s['ratio']:.2f} | >= 0.95 |"
    )
    print(f"| first streamed text | {s['first_text_s']:.2f} s | |")
    print(
        f"| {b['n']} samples batched vs sequential ({b['tokens_each']} tokens each) | {b['batched_s']:.1f} s vs "
        f"{b['sequential_s']:.1f} s = {b['speedup']:.1f}x | >= 3x |"
    )
    for label, c in (
        ("offline default + CaP adapter", figures["cold_start"]),
        ("base model alone", figures["cold_start_base_only"]),
    ):
        print(
            f"| cold start from the caches, {label}: launch to model ready (of which load_model) | "
            f"{c['ready_s']:.2f} s ({c['load_model_s']:.2f} s) | <= 5 s |"
        )
    write_json(args.output, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
