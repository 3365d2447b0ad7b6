"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's
`python -m llama_cpp.server` on 127.0.0.1, serving the offline CaP model exported to GGUF, started
and stopped by these tests (one killed mid-batch, the rerun resumes)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cap_app.backends.base import GenerationConfig
from cap_app.backends.llama_cpp import LlamaCppBackend
from cap_app.backends.openai import OpenAIBackend
from cap_app.cli import main
from cap_app.engine.prompts import build_messages
from cap_app.models.gguf import cached_export
from cap_app.models.loading import DEFAULT_ADAPTER_DIR, default_gguf_path
from tests.helpers.paths import ROOT
from tests.helpers.resumable_batch import ITEMS, refine_argv, write_items, written_ids

KEY = "sk-local-test"
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
DRAFT = "In May she sold 48 / 2 = 24 clips.\nAltogether she sold 48 + 24 = 72 clips.\nA: 72"


class Server:
    """`python -m llama_cpp.server` on a free local port; `start()` waits until it answers."""

    def __init__(self, model: Path):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.model, self.process = model, None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "Server":
        # One request at a time, each one finished: llama_cpp.server's default drops a running
        # request when a new one arrives.
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cap_app.backends.llama_server",
                "--model",
                str(self.model),
                "--model_alias",
                "cap",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--n_ctx",
                "4096",
                "--api_key",
                KEY,
                "--interrupt_requests",
                "false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError("llama_cpp.server did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def model_file(cap_cache_dir) -> Path:
    return cached_export(default_gguf_path(), str(DEFAULT_ADAPTER_DIR))


@pytest.fixture(scope="module")
def server(model_file):
    server = Server(model_file).start()
    yield server
    server.kill()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("CAP_API_KEY", KEY)


def test_refine_through_the_server_from_the_command_line(server, api_key, capsys):
    code = main(
        [
            "refine",
            "--backend",
            "openai",
            "--base-url",
            server.url,
            "--question",
            QUESTION,
            "--draft",
            DRAFT,
            "--strategy",
            "vote",
            "--n",
            "2",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == f"cap @ {server.url}" and len(result["candidates"]) == 2
    assert all(c["finish"] == "program_end" and c["logprob"] < 0 for c in result["candidates"])
    assert KEY not in out + err


def test_the_server_writes_the_same_greedy_program_as_llama_cpp_in_process(server, model_file):
    conversation = [build_messages(QUESTION, DRAFT)]
    config = GenerationConfig(max_new_tokens=120)
    remote = OpenAIBackend(server.url, "cap", api_key=KEY, concurrency=1, timeout_s=60, retries=0)
    [[served]] = remote.generate_batch(conversation, config)
    [[local]] = LlamaCppBackend(model_file, name="local").generate_batch(conversation, config)
    assert (served.text, served.finish) == (local.text, local.finish)
    assert served.mean_logprob == pytest.approx(local.mean_logprob, abs=0.005)


def test_the_page_streams_a_refinement_through_the_operators_server(server, api_key, monkeypatch):
    """The app's Refine handler with the `openai` backend the operator named (CAP_BASE_URL): the
    reply grows in the code view as the server streams it, and the result names the served model."""
    from cap_app.ui import refine_handlers

    monkeypatch.setenv("CAP_BASE_URL", server.url)
    frames = [
        dict(zip(refine_handlers.OUTPUTS, frame, strict=True))
        for frame in refine_handlers.refine_page(
            QUESTION,
            DRAFT,
            "72",
            "default",
            strategy="greedy",
            n=1,
            temperature=0.0,
            max_new_tokens=160,
            time_limit_s=5,
            backend_choice="openai",
            request=None,
        )
    ]
    streamed = [f["code"] for f in frames[:-1] if isinstance(f["code"], str) and f["code"]]
    assert len(streamed) > 2 and not any("```" in code for code in streamed)  # the program grows, not its fence
    assert any(f"cap @ {server.url}" in f["status"] for f in frames if isinstance(f["status"], str))
    assert frames[-1]["status"] == "Done." and "Gold answer 72" in frames[-1]["verdict"]
    assert KEY not in json.dumps([str(f) for f in frames])


def test_a_bad_key_is_one_line(server, monkeypatch, capsys):
    monkeypatch.setenv("CAP_API_KEY", "sk-wrong")
    assert main(["refine", "--backend", "openai", "--base-url", server.url, "--question", QUESTION]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the server at {server.url} refused the API key (HTTP 401") and "sk-wrong" not in err


def test_a_draft_that_fills_the_servers_context_is_refined_and_told_so(server, model_file):
    """Issue 25: llama_cpp.server (n_ctx 4,096 here) lowers max_tokens to what a long prompt leaves
    without a word; the program it cuts there is reported as cut by the context, in the settings'
    words, not as a program cut at a "Max new tokens" the visitor never chose."""
    from cap_app.engine.refine import RefineConfig, refine

    line = "In May 48 / 2 = 24, 48 + 24 = 72, 72 - 9 = 63.\n"  # numbers: ~2 characters a token
    local = LlamaCppBackend(model_file, name="local", contexts=1)
    per_line = len(local.prompt_tokens(build_messages(QUESTION, line * 2))) - len(
        local.prompt_tokens(build_messages(QUESTION, line))
    )
    base = len(local.prompt_tokens(build_messages(QUESTION, line + "A: 72")))
    local.close()
    draft = line * ((4096 - 40 - base) // per_line + 1) + "A: 72"  # leaves ~40 tokens: too few for a program
    remote = OpenAIBackend(server.url, "cap", api_key=KEY, concurrency=1, timeout_s=120, retries=0)
    result = refine(QUESTION, draft, config=RefineConfig(max_new_tokens=400), backend=remote)
    [candidate] = result.candidates
    assert len(draft) < 8000 and candidate.finish == "length" and candidate.tokens < 400
    assert result.notes == [  # (this server sends no usage: the prompt's tokens are not known here)
        f"“Max new tokens” was lowered from 400 to {candidate.tokens} for this draft: "
        "the model's context has no more room after the question and draft."
    ]


def test_a_server_killed_mid_batch_loses_nothing_and_the_rerun_resumes(model_file, tmp_path):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_items(source, QUESTION, DRAFT)
    server = Server(model_file).start()
    refine = refine_argv(server.url, source, output, retries=0)
    argv = [sys.executable, "-m", "cap_app", *refine, "--max-new-tokens", "120"]
    env = os.environ | {"CAP_API_KEY": KEY}
    batch = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not output.exists() or not output.read_text().count("\n"):
            assert batch.poll() is None, batch.stderr.read()
            time.sleep(0.05)
    finally:
        server.kill()
    _, err = batch.communicate(timeout=60)
    assert batch.returncode == 1
    assert f"error: lost the connection to {server.url}" in err or f"error: cannot reach {server.url}" in err, err
    written = written_ids(output)
    assert 1 <= len(written) < ITEMS

    server.start()
    try:
        rerun = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.kill()
    assert rerun.returncode == 0, rerun.stderr
    assert f"refined {ITEMS - len(written)}, already done {len(written)}" in rerun.stderr
    assert sorted(written_ids(output)) == list(range(ITEMS))
