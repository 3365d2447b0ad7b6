"""What the first visitor of a freshly started app waits for (issue 25 item 2, issue 29).

    python -m benchmarks.first_visitor                     # empty model cache, a visitor 30 s after start
    python -m benchmarks.first_visitor --arrive-s 0        # ... as soon as the page is up
    python -m benchmarks.first_visitor --cache DIR         # a prepared cache (the Docker image's case)

Starts `python app.py` (a Space's command) on a free port with the given model cache (default: a
new empty folder), waits until `--arrive-s` seconds after the start, then refines the first
example (greedy) through the page's own API, recording every status the page shows with its time,
and finally SIGTERMs the app and times its stop. Prints one JSON object (and writes it to --output).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.common import ROOT, write_json


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(cache: Path, work: Path, python: str = sys.executable, cwd: Path = ROOT, extra_env=None, preexec_fn=None):
    """`python app.py` with its own cache, database and temporary folder; (process, url, started)."""
    port = free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "CAP_CACHE_DIR": str(cache),
        "CAP_DB_PATH": str(work / "annotations.db"),
        "TMPDIR": str(work),
        "GRADIO_SERVER_PORT": str(port),  # on this machine only, whatever an image's environment says
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("CAP_MODEL", "CAP_BACKEND", "CAP_PREPARE"):
        env.pop(name, None)
    log = open(work / "app.log", "wb")  # noqa: SIM115 - closed with the process
    started = time.monotonic()
    process = subprocess.Popen(
        [python, "app.py"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
    )
    return process, f"http://127.0.0.1:{port}/", started


def wait_for_page(process, url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the app exited before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the page did not come up")


def refine_once(url: str) -> tuple[float, list[tuple[float, str]], str]:
    """Greedy refinement of the first example through /refine: (seconds, [(t, status)], verdict text)."""
    from gradio_client import Client

    from cap_app.ui.examples import load_examples

    example = load_examples()[0]
    client = Client(url, verbose=False)
    began = time.monotonic()
    job = client.submit(
        example.question, example.draft, example.gold, "default", "greedy", 1, 0.0, 400, 5, "auto", "located",
        api_name="/refine",
    )  # fmt: skip
    statuses: list[tuple[float, str]] = []
    seen = 0
    while not job.done():
        outputs = job.outputs()
        for frame in outputs[seen:]:
            if frame[0] and (not statuses or statuses[-1][1] != frame[0]):
                statuses.append((round(time.monotonic() - began, 2), frame[0]))
        seen = len(outputs)
        time.sleep(0.05)
    final = job.result()
    took = time.monotonic() - began
    for frame in job.outputs()[seen:]:
        if frame[0] and (not statuses or statuses[-1][1] != frame[0]):
            statuses.append((round(took, 2), frame[0]))
    return took, statuses, str(final[2])


def stop_app(process) -> float:
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return float("inf")
    return time.monotonic() - sent


def measure(cache: Path, arrive_s: float, work: Path, **start_kwargs) -> dict:
    empty = not any(cache.rglob("*.gguf")) if cache.exists() else True
    process, url, started = start_app(cache, work, **start_kwargs)
    try:
        wait_for_page(process, url)
        page_up_s = time.monotonic() - started
        time.sleep(max(0.0, started + arrive_s - time.monotonic()))
        arrived_s = time.monotonic() - started
        wait_s, statuses, verdict = refine_once(url)
    finally:
        stop_s = stop_app(process)
    return {
        "cache": "empty" if empty else "prepared",
        "page_up_s": round(page_up_s, 2),
        "arrived_s": round(arrived_s, 2),
        "refinement_s": round(wait_s, 2),
        "statuses": statuses,
        "refined": "Done" in (statuses[-1][1] if statuses else ""),
        "verdict_start": verdict[:160],
        "sigterm_to_exit_s": round(stop_s, 2),
        "sandbox_folders_left": sorted(p.name for p in work.glob("cap-sandbox-*")),
        "log_tail": (work / "app.log").read_text(errors="replace").splitlines()[-6:],
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrive-s", type=float, default=30.0, help="when the visitor arrives, after the start")
    parser.add_argument("--cache", default=None, help="model cache to use (default: a new empty folder)")
    parser.add_argument("--output", default="runs/bench/first_visitor.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cap-first-visitor-") as work:
        cache = Path(args.cache) if args.cache else Path(work) / "cache"
        figures = measure(cache, args.arrive_s, Path(work))
    print(json.dumps(figures, indent=2))
    write_json(args.output, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
