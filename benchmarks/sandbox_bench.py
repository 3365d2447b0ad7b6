"""Sandbox latency and throughput on GSM8K-style programs, against a fresh `python3` per program.

    .venv/bin/python -m benchmarks.sandbox_bench                  # 500 programs
    .venv/bin/python -m benchmarks.sandbox_bench --programs 100 --json runs/sandbox_bench.json
    mkdir /tmp/before && git archive HEAD cap_app | tar -x -C /tmp/before
    .venv/bin/python -m benchmarks.sandbox_bench --before /tmp/before    # a change against the code before it

The programs are the ones the data builder makes from the calculator annotations of GSM8K train
(`<<48/2=24>>`, cap_app/data/gsm8k_programs.py): the question's quantities and one variable per
annotation, each named, the last one printed. Only problems whose chain reproduces the reference
answer are kept. `--sympy-programs N` of them (default 100) also run rewritten to reach their answer
through sympy (`solve(Eq(answer, nsimplify(total)), answer)`), in the zygote that serves sympy.
With `--before DIR` (a copy of `cap_app` from before a change), that copy's zygote runs the same
programs in the same alternating rounds: a before/after comparison under the same load.
Measured: per-program latency (p50/p95) with the trace off and on, one run at a time (the rows
taking turns every 25 programs), the CPU time all processes involved spent per program, and
throughput with `--workers` threads in `--rounds` alternating rounds; the baseline starts
`python3 -c PROGRAM` per program, the way many math-agent executors do. Goals (issue 3): p50
<= 5 ms trace off, <= 15 ms trace on, >= 10x the baseline's throughput. Figures for this
machine: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import TRAIN, write_json
from cap_app.data.gsm8k_programs import UnsupportedSolution, parse_solution
from cap_app.engine.arithmetic import parse_number


def program_from_solution(question: str, solution: str) -> tuple[str, float] | None:
    """(program, reference answer) for a GSM8K item, or None when its annotations make no program
    or do not reproduce the reference answer."""
    try:
        parsed = parse_solution(question, solution)
        value = parsed.values()[parsed.steps[-1].name]
    except (UnsupportedSolution, ArithmeticError):
        return None
    expected = parse_number(parsed.gold)
    if expected is None or not math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-6):
        return None
    return parsed.program(), float(expected)


def gsm8k_programs(limit: int, path: Path = TRAIN) -> list[tuple[str, float]]:
    """The first `limit` GSM8K train solutions that become a correct program."""
    programs = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            built = program_from_solution(row["question"], row["answer"])
            if built is not None:
                programs.append(built)
                if len(programs) == limit:
                    break
    return programs


def sympy_variant(program: str) -> str:
    """The same program, its last line (`print(name)`) replaced by a sympy route to the value:
    what a model writing sympy does, and what runs in the sympy zygote (parser closed, gate armed)."""
    *body, last = program.rstrip("\n").splitlines()
    name = last.removeprefix("print(").removesuffix(")")
    return "\n".join(
        body
        + [
            "from sympy import symbols, Eq, solve, nsimplify",
            "answer = symbols('answer')",
            f"print(float(solve(Eq(answer, nsimplify({name})), answer)[0]))",
        ]
    )


def answer_matches(answer: str | None, expected: float) -> bool:
    try:
        return answer is not None and math.isclose(float(answer), expected, rel_tol=1e-6, abs_tol=1e-6)
    except ValueError:
        return False


def run_in_fresh_python(program: str) -> str | None:
    """The baseline: a new interpreter (this environment's python3) per program; answer = last printed line."""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    lines = done.stdout.strip().splitlines()
    return lines[-1].strip() if lines else None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def process_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its reaped children (here: a zygote and its programs)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_latency(
    cases: list[tuple[str, Callable[[str], str | None], Callable[[], float]]], programs: list[tuple[str, float]]
) -> list[dict]:
    """Latency one run at a time, for each case (name, run, CPU clock of its other processes),
    with the CPU time all processes involved spent (which other work on the machine inflates far
    less than latency), and whether every answer is right. The cases take turns every 25
    programs, so the VM's drift hits them alike (turns at every program left each case's caches
    cold and made every row about twice as slow)."""
    latencies = {name: [] for name, _, _ in cases}
    wrong, client_cpu_s = dict.fromkeys(latencies, 0), dict.fromkeys(latencies, 0.0)
    other_cpu_before = {name: cpu_s() for name, _, cpu_s in cases}
    for start in range(0, len(programs), 25):
        for (name, run, _), (program, expected) in itertools.product(cases, programs[start : start + 25]):
            cpu_before, started = time.process_time(), time.perf_counter()
            answer = run(program)
            latencies[name].append((time.perf_counter() - started) * 1000)
            client_cpu_s[name] += time.process_time() - cpu_before
            wrong[name] += not answer_matches(answer, expected)
    rows = []
    for name, _, cpu_s in cases:
        cpu_ms = (cpu_s() - other_cpu_before[name] + client_cpu_s[name]) * 1000 / len(programs)
        rows.append(
            {
                "name": name,
                "programs": len(programs),
                "wrong_answers": wrong[name],
                "p50_ms": round(statistics.median(latencies[name]), 2),
                "p95_ms": round(_percentile(latencies[name], 0.95), 2),
                "cpu_ms_per_run": round(cpu_ms, 2),
            }
        )
    return rows


def measure_throughput(
    runs: dict[str, tuple[Callable[[str], object], Callable[[int], list[str]]]], workers: int, rounds: int
) -> dict[str, float]:
    """Runs per second for each entry of `runs` (name -> (run, programs of round r)), from
    `workers` threads, in alternating rounds: the VM's speed drifts by 10-20% within a minute,
    and alternating makes the drift hit every row alike instead of whichever ran last. Every
    other round runs the rows in reverse order, so none always follows the baseline's hundreds
    of interpreter start-ups."""
    elapsed, done = dict.fromkeys(runs, 0.0), dict.fromkeys(runs, 0)
    with ThreadPoolExecutor(workers) as pool:
        for round_index in range(rounds):
            for name in list(runs)[:: -1 if round_index % 2 else 1]:
                run, programs_of_round = runs[name]
                batch = programs_of_round(round_index)
                started = time.perf_counter()
                list(pool.map(run, batch))
                elapsed[name] += time.perf_counter() - started
                done[name] += len(batch)
    return {name: done[name] / elapsed[name] for name in runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=500, help="how many GSM8K programs (default 500)")
    parser.add_argument(
        "--workers",
        type=int,
        default=2 * (os.cpu_count() or 1),
        help="threads for the throughput runs, the same for every row (default: 2 per CPU, so "
        "the sandbox's round trips overlap; the baseline is CPU-bound either way)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating throughput rounds (default 5; the baseline runs 1/rounds of the programs in each)",
    )
    parser.add_argument(
        "--sympy-programs", type=int, default=100, help="how many also run through sympy (default 100; 0: none)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--before", type=Path, help="a folder holding a copy of cap_app/ from before a change: its sandbox runs too"
    )
    args = parser.parse_args(argv)

    from benchmarks.processes import zygote_processes
    from cap_app.sandbox import SandboxConfig
    from cap_app.sandbox.runner import SandboxServer, run_on

    programs = gsm8k_programs(args.programs)
    sources = [program for program, _ in programs]
    sympy_programs = [(sympy_variant(program), expected) for program, expected in programs[: args.sympy_programs]]
    sympy_sources = [program for program, _ in sympy_programs]
    before = {"package_root": str(args.before.resolve())} if args.before else None
    servers = {"sandbox": SandboxServer()} | ({"sandbox before": SandboxServer(**before)} if before else {})
    sympy_servers = {"sandbox": SandboxServer(with_sympy=True)}
    if before and sympy_sources:
        sympy_servers["sandbox before"] = SandboxServer(with_sympy=True, **before)
    cases = []  # name, run, CPU clock, programs of throughput round r
    sympy_cases = []  # the same, for the sympy programs (trace on, as the app runs them)
    for label, server, trace, kind, kind_sources in [
        *((label, server, trace, "", sources) for label, server in servers.items() for trace in (False, True)),
        *((label, server, True, ", sympy", sympy_sources) for label, server in sympy_servers.items() if sympy_sources),
    ]:
        config = SandboxConfig(trace=trace)
        run = lambda program, server=server, config=config: run_on(server, program, config).answer  # noqa: E731
        for program in kind_sources[:20]:  # warm the zygote's copies and the page cache
            run(program)
        zygotes = zygote_processes(server.pid)
        (sympy_cases if kind else cases).append(
            (
                f"{label}{kind}, trace {'on' if trace else 'off'}",
                run,
                lambda zygotes=zygotes: sum(map(process_cpu_s, zygotes)),
                lambda _, kind_sources=kind_sources: kind_sources,
            )
        )
    # The baseline, ten times slower, runs a 1/rounds slice in each round: each program once in all.
    cases.append(
        (
            "baseline: python3 -c per program",
            run_in_fresh_python,
            children_cpu_s,
            lambda round_index: sources[round_index :: args.rounds],
        )
    )
    # The sandbox rows take turns; the baseline, whose interpreter start-ups would leave their
    # caches cold, runs alone after them.
    rows = measure_latency([(name, run, cpu_s) for name, run, cpu_s, _ in cases[:-1]], programs)
    if sympy_cases:
        rows += measure_latency([case[:3] for case in sympy_cases], sympy_programs)
    rows += measure_latency([cases[-1][:3]], programs)
    cases[-1:-1] = sympy_cases
    rates = measure_throughput({name: (run, share) for name, run, _, share in cases}, args.workers, args.rounds)
    for server in [*servers.values(), *sympy_servers.values()]:
        server.stop()
    for row in rows:
        row["throughput_per_s"], row["workers"] = round(rates[row["name"]], 1), args.workers
    baseline = rows[-1]["throughput_per_s"]
    load = os.getloadavg()[1]  # other work on the machine slows every row; report it
    print(
        f"{len(programs)} GSM8K programs, {os.cpu_count()} CPUs, {args.workers} workers and {args.rounds} "
        f"alternating rounds for throughput, load average {load:.1f}"
    )
    print(f"Walls: {', '.join(servers['sandbox'].walls)}")
    print(f"{'':41} {'p50 ms':>8} {'p95 ms':>8} {'CPU ms':>8} {'runs/s':>8} {'vs baseline':>12} {'wrong':>6}")
    for row in rows:
        speedup = row["throughput_per_s"] / baseline
        row["speedup_vs_baseline"] = round(speedup, 1)
        print(
            f"{row['name']:41} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['cpu_ms_per_run']:>8} "
            f"{row['throughput_per_s']:>8} {speedup:>11.1f}x {row['wrong_answers']:>6}"
        )
    by_name = {row["name"]: row for row in rows}
    for row in rows if args.before else []:  # the change's cost: after against before
        old = by_name.get(row["name"].replace("sandbox,", "sandbox before,"))
        if row["name"].startswith("sandbox,") and old is not None:
            print(
                f"{row['name']} against before: p50 {row['p50_ms'] / old['p50_ms'] - 1:+.1%}, "
                f"CPU {row['cpu_ms_per_run'] / old['cpu_ms_per_run'] - 1:+.1%}, "
                f"runs/s {row['throughput_per_s'] / old['throughput_per_s'] - 1:+.1%}"
            )
    if args.json:
        write_json(
            args.json,
            {"cpus": os.cpu_count(), "load_average_5min": load, "walls": servers["sandbox"].walls, "rows": rows},
        )
    return 0 if all(row["wrong_answers"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
