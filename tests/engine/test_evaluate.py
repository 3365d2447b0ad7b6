"""`eval` resumes: a run cut short (its server lost, or the process killed mid-write) keeps every
finished result in `<report>.partial.jsonl`, and the rerun refines only the rest into the same
report. Driven through the scripted OpenAI stub, whose answers are the same on every run."""

import json

import pytest

from cap_app.cli import main
from tests.helpers.openai_stub import OpenAIStub

ITEMS = [{"question": f"What is {i} + 1?", "draft": f"{i} + 1 = 7\nA: 7", "gold": str(i + 1)} for i in range(3)]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr("cap_app.backends.openai.FIRST_BACKOFF_S", 0.01)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return path


def eval_argv(url, source, report, *options) -> list[str]:
    """greedy (one request an item) then cot+cap (two), one item at a time, so a lost server stops it between items."""
    return [
        "eval",
        "--input",
        str(source),
        "--report",
        str(report),
        "--strategy",
        "greedy",
        "cot+cap",
        "--n",
        "2",
        *("--backend", "openai", "--base-url", url, "--batch-size", "1", "--retries", "1", "--no-trace"),
        *options,
    ]


def without_timings(report) -> dict:
    """The report, less the seconds each item took: all that differs between two runs of the same eval."""
    data = json.loads(report.read_text())
    for summary in data["summary"].values():
        del summary["seconds_per_item"]
    for item in data["items"]:
        for result in item["results"].values():
            del result["ms"]
    return data


def asked(requests) -> list[str]:
    """The question each request was about, in the order they came."""
    return [item["question"] for r in requests for item in ITEMS if item["question"] in r["messages"][-1]["content"]]


def test_an_eval_cut_short_resumes_into_the_same_report(source, tmp_path, capsys):
    reference, report = tmp_path / "reference.json", tmp_path / "runs" / "report.json"
    sidecar = tmp_path / "runs" / "report.json.partial.jsonl"
    with OpenAIStub() as stub:
        assert main(eval_argv(stub.url, source, reference)) == 0
        assert not (tmp_path / "reference.json.partial.jsonl").exists()
        stub.requests.clear()

        stub.failures = [None] * 5 + [(503, "shutting down")] * 10  # greedy's 3 items, cot+cap's first, then gone
        assert main(eval_argv(stub.url, source, report)) == 1
        assert "failed (HTTP 503: shutting down); gave up after 2 tries" in capsys.readouterr().err
        assert not report.exists()
        run, *done = [json.loads(line) for line in sidecar.read_text().splitlines()]
        assert run["run"]["input"] == str(source) and list(run["run"]["config"]) == ["greedy", "cot+cap"]
        assert [(r["strategy"], r["question"]) for r in done] == [("greedy", item["question"]) for item in ITEMS] + [
            ("cot+cap", ITEMS[0]["question"])
        ]
        with sidecar.open("a") as partial:  # and the process was killed while writing the next result
            partial.write('{"draft_key": "draft", "question": "What is 1')

        stub.failures, stub.requests = [], []
        assert main(eval_argv(stub.url, source, report)) == 0
        err = capsys.readouterr().err
        assert f"resuming: 4 results from {sidecar}" in err and "cot+cap:  33%" in err  # its bar starts at 1 of 3
        # only cot+cap's two items left: two samples each
        assert sorted(asked(stub.requests)) == sorted([item["question"] for item in ITEMS[1:]] * 2)
    assert not sidecar.exists()
    assert without_timings(report) == without_timings(reference)


def test_a_sidecar_from_other_settings_is_refused(source, tmp_path, capsys):
    report = tmp_path / "report.json"
    sidecar = tmp_path / "report.json.partial.jsonl"
    with OpenAIStub() as stub:
        stub.failures = [None] * 2 + [(503, "shutting down")] * 10
        assert main(eval_argv(stub.url, source, report)) == 1
        kept = sidecar.read_text()
        capsys.readouterr()
        stub.failures, stub.requests = [], []
        assert main(eval_argv(stub.url, source, report, "--max-new-tokens", "64")) == 2
        assert capsys.readouterr().err == (
            f"error: {sidecar} holds the results of an eval with other settings (input, draft keys, strategies, "
            "config or model): delete it or choose another --report\n"
        )
        assert sidecar.read_text() == kept and stub.requests == []
