"""The openai backend's failures and limits against a scripted local server (tests/helpers/openai_stub.py):
retries on 500/429, a slow server, a bad key, a wrong model, requests in flight, a server lost
mid-batch and the rerun that resumes. Each failure is one line that names the server, not the key."""

import json

import pytest

from cap_app.backends import BackendConfig, BackendError, get_backend
from cap_app.backends.base import GenerationConfig
from cap_app.backends.openai import OpenAIBackend
from cap_app.cli import main
from cap_app.engine.inputs import RefineItem
from cap_app.engine.refine import RefineConfig, refine, refine_stream
from cap_app.models.loading import ModelConfig
from tests.helpers.openai_stub import PROGRAM, OpenAIStub
from tests.helpers.resumable_batch import refine_argv, write_items, written_ids

QUESTION = "Janet sells 9 eggs at $2 each. How much does she make?"
DRAFT = "9 * 2 = 16\nA: 16"
SECRET = "sk-test-not-for-logs"


def backend(stub, **options):
    settings = {"api_key": stub.key, "concurrency": 2, "timeout_s": 5.0, "retries": 2} | options
    return OpenAIBackend(stub.url, None, **settings)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr("cap_app.backends.openai.FIRST_BACKOFF_S", 0.01)


def test_a_refinement_through_the_server_streams_and_votes():
    with OpenAIStub() as stub:
        events = list(refine_stream(RefineItem(QUESTION, DRAFT), backend=backend(stub)))
        result = events[-1].result
        assert "".join(e.text for e in events if e.kind == "token") == PROGRAM.replace("18", "0")
        assert result.program_answer == "0" and result.model == f"cap @ {stub.url}"
        assert result.candidates[0].logprob == pytest.approx(-0.25) and result.candidates[0].finish == "program_end"
        voted = refine(QUESTION, DRAFT, config=RefineConfig(strategy="vote", n=3, seed=5), backend=backend(stub))
        assert voted.votes == {"5": 1, "6": 1, "7": 1}  # one request per sample, seeded seed + row
        sent = stub.requests[-1]
        assert sent["model"] == "cap" and sent["stream"] is True and sent["messages"][0]["role"] == "system"


def test_prompt_tokens_are_the_servers_count_where_it_finished_the_sample():
    """The stream's usage gives a sample's prompt tokens when the server ends it (EOS); a sample cut
    here at the program's end never gets its usage: unknown (None), not 0, in the result too."""
    ended = "```python\nprint(18)\n"  # no closing fence: the server's EOS ends it
    with OpenAIStub(text=ended) as stub:
        result = refine(QUESTION, DRAFT, backend=backend(stub))
        assert result.candidates[0].finish == "eos" and result.program_answer == "0"
        assert stub.requests[-1]["stream_options"] == {"include_usage": True}
        assert result.prompt_tokens == OpenAIStub.usage(stub.requests[-1], "")["prompt_tokens"] > 0
    with OpenAIStub() as stub:
        result = refine(QUESTION, DRAFT, backend=backend(stub))
        assert result.candidates[0].finish == "program_end" and result.prompt_tokens is None
        assert json.loads(json.dumps(result.to_dict()))["prompt_tokens"] is None


def test_500_and_429_are_retried_and_nothing_is_lost():
    with OpenAIStub() as stub:
        stub.failures = [(500, "boom"), (429, "slow down")]
        [[generation]] = backend(stub).generate_batch([[{"role": "user", "content": "q"}]], GenerationConfig())
        assert generation.text == PROGRAM.replace("18", "0") and len(stub.requests) == 3


def test_a_server_that_keeps_failing_gives_up_with_one_line():
    with OpenAIStub() as stub:
        stub.failures = [(500, "boom")] * 3
        with pytest.raises(BackendError) as error:
            backend(stub).generate_batch([[{"role": "user", "content": "q"}]], GenerationConfig())
        assert str(error.value) == f"the server at {stub.url} failed (HTTP 500: boom); gave up after 3 tries"


def test_a_slow_server_times_out():
    with OpenAIStub() as stub:
        stub.failures = [1.0, 1.0]
        with pytest.raises(BackendError) as error:
            backend(stub, timeout_s=0.2, retries=1).generate_batch(
                [[{"role": "user", "content": "q"}]], GenerationConfig()
            )
        assert str(error.value) == f"no reply from {stub.url} within 0.2 s; gave up after 2 tries"


def test_a_bad_key_is_refused_at_once_and_never_shown(monkeypatch, capsys):
    with OpenAIStub(key=SECRET) as stub:
        monkeypatch.setenv("CAP_API_KEY", "sk-wrong-key")
        code = main(["refine", "--backend", "openai", "--base-url", stub.url, "--question", QUESTION, "--draft", DRAFT])
        err = capsys.readouterr().err
        assert code == 1
        assert (
            err == f"error: the server at {stub.url} refused the API key (HTTP 401: Invalid API key); set CAP_API_KEY\n"
        )
        monkeypatch.setenv("CAP_API_KEY", SECRET)
        assert (
            main(
                [
                    "refine",
                    "--backend",
                    "openai",
                    "--base-url",
                    stub.url,
                    "--question",
                    QUESTION,
                    "--draft",
                    DRAFT,
                    "--json",
                ]
            )
            == 0
        )
        out, err = capsys.readouterr()
        assert json.loads(out)["candidates"][0]["answer"] == "0" and SECRET not in out + err


def test_a_wrong_model_name_is_refused_before_any_work():
    with OpenAIStub(model="cap") as stub:
        with pytest.raises(BackendError) as error:
            get_backend(ModelConfig(model="gpt-5"), BackendConfig(backend="openai", base_url=stub.url))
        assert str(error.value) == f"the server at {stub.url} has no model 'gpt-5' (it serves: cap)"
        assert stub.requests == []


def test_a_base_url_without_the_api_path_says_so():
    with OpenAIStub() as stub:
        with pytest.raises(BackendError) as error:
            OpenAIBackend(stub.url.removesuffix("/v1"), None, api_key=None, concurrency=1, timeout_s=5, retries=0)
        root = stub.url.removesuffix("/v1")
        assert str(error.value) == (
            f"the server at {root} has no such endpoint (HTTP 404: not found); "
            "--base-url is its OpenAI API address, usually ending in /v1"
        )


def test_concurrency_requests_are_in_flight_together():
    with OpenAIStub(delay_s=0.01) as stub:
        backend(stub, concurrency=4).generate_batch([[{"role": "user", "content": "q"}]], GenerationConfig(n=8))
        assert stub.most_in_flight == 4 and len(stub.requests) == 8


def test_a_server_lost_mid_batch_loses_nothing_and_the_rerun_resumes(tmp_path, capsys):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_items(source, QUESTION, DRAFT)
    with OpenAIStub() as stub:
        stub.failures = [None, None] + [(503, "shutting down")] * 10  # two items, then the server is gone
        argv = refine_argv(stub.url, source, output, retries=1)
        assert main(argv) == 1
        assert "failed (HTTP 503: shutting down); gave up after 2 tries" in capsys.readouterr().err
        assert written_ids(output) == [0, 1]
        stub.failures = []
        assert main(argv) == 0
        assert "refined 4, already done 2" in capsys.readouterr().err
    assert written_ids(output) == [0, 1, 2, 3, 4, 5]


def test_a_prompt_too_long_for_the_servers_context_gets_the_budget_left_and_says_so():
    """Issue 25: a server that refuses prompt + max_tokens over its context (vLLM's wording) is asked
    again with what its own numbers leave, and the result says "Max new tokens" was lowered."""
    with OpenAIStub(context=700) as stub:
        result = refine(QUESTION, DRAFT, config=RefineConfig(max_new_tokens=400), backend=backend(stub))
        asked = [request["max_tokens"] for request in stub.requests]
    prompt = asked[1] and 700 - asked[1]
    assert asked[0] == 400 and 32 <= asked[1] < 400
    assert result.program_answer == "0" and result.notes == [
        f"“Max new tokens” was lowered from 400 to {asked[1]} for this draft: the model reads at most 700 tokens "
        f"and the question and draft take {prompt}."
    ]
    with OpenAIStub(context=300) as stub, pytest.raises(BackendError, match="shorten the draft"):
        refine(QUESTION, DRAFT, backend=backend(stub))
