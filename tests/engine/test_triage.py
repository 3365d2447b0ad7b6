"""The verdict as a flag on wrong drafts: the triage order, its AUROC, and what `eval` reports
of it on drafts whose verdicts are known (the scripted OpenAI stub's program prints 18)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from cap_app.cli import main
from cap_app.engine.triage import TRIAGE_ORDER, auroc, triage_key
from tests.helpers.openai_stub import OpenAIStub


def brute_force_auroc(keys, positives) -> float:
    pairs = [(p, n) for p, n in itertools.product(range(len(keys)), repeat=2) if positives[p] and not positives[n]]
    return sum(1.0 if keys[p] < keys[n] else 0.5 if keys[p] == keys[n] else 0.0 for p, n in pairs) / len(pairs)


def test_auroc_is_the_share_of_wrong_right_pairs_in_order_ties_half():
    generator = random.Random(7)
    for _ in range(50):
        size = generator.randint(2, 30)
        keys = [generator.randint(0, 5) for _ in range(size)]
        positives = [generator.random() < 0.5 for _ in range(size)]
        if 0 < sum(positives) < size:
            assert auroc(keys, positives) == pytest.approx(brute_force_auroc(keys, positives))
    assert auroc([1, 2, 3], [True, True, False]) == 1.0
    assert auroc([1, 2, 3], [False, True, True]) == 0.0
    assert auroc([1, 2], [True, True]) is None  # no right draft: nothing to separate


def test_triage_order_puts_doubt_first_then_the_least_confident():
    keys = [
        ("agrees", -0.1),
        ("no_answer", None),
        ("unconfirmed", -0.2),
        ("disagrees", -0.05),
        ("unconfirmed", -0.9),
        ("agrees", None),
    ]
    ordered = sorted(keys, key=lambda key: triage_key(*key))
    assert ordered == [
        ("disagrees", -0.05),
        ("unconfirmed", -0.9),
        ("unconfirmed", -0.2),
        ("no_answer", None),
        ("agrees", -0.1),
        ("agrees", None),
    ]
    assert [verdict for verdict, _ in ordered[:4]] == ["disagrees", "unconfirmed", "unconfirmed", "no_answer"]
    assert TRIAGE_ORDER == ("disagrees", "unconfirmed", "no_answer", "agrees")


# The stub's program prints 10 + 8 for every item: a right draft it agrees with, a wrong one it agrees with,
# a slip it recomputes (disagrees), and a wrong answer with no work to check (unconfirmed).
KNOWN = [
    {"question": "Tom has 10 apples and buys 8. How many?", "draft": "10 + 8 = 18\nA: 18", "gold": "18"},
    {"question": "Ann has 10 pears and buys 8. How many?", "draft": "10 + 8 = 18\nA: 18", "gold": "20"},
    {"question": "Bo has 10 plums and buys 8. How many?", "draft": "10 + 8 = 17\nA: 17", "gold": "18"},
    {"question": "Cy has 10 figs and buys 8. How many?", "draft": "10 and 8 more make 20.\nA: 20", "gold": "18"},
]


def test_eval_reports_the_verdict_as_a_flag(tmp_path, capsys):
    source, report = tmp_path / "in.jsonl", tmp_path / "report.json"
    source.write_text("".join(json.dumps(item) + "\n" for item in KNOWN))
    with OpenAIStub(text="```python\nprint(10 + 8)\n```") as stub:
        argv = ["eval", "--input", str(source), "--report", str(report), "--backend", "openai", "--base-url", stub.url]
        assert main([*argv, "--no-trace", "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    flag = json.loads(report.read_text())["summary"]["greedy"]["verdict_flag"]
    assert [item["results"]["greedy"]["verdict"] for item in json.loads(report.read_text())["items"]] == [
        "agrees",
        "agrees",
        "disagrees",
        "unconfirmed",
    ]
    assert flag["verdicts"] == {
        "disagrees": {"items": 1, "wrong_drafts": 1},
        "unconfirmed": {"items": 1, "wrong_drafts": 1},
        "no_answer": {"items": 0, "wrong_drafts": 0},
        "agrees": {"items": 2, "wrong_drafts": 1},
    }
    # wrong drafts: the slip and the unconfirmed one sort before the right draft, the agreed wrong one ties it
    assert flag["triage_auroc"] == pytest.approx(2.5 / 3)
    assert flag["logprob_auroc"] == pytest.approx(0.5)  # the same program every time: no signal
    assert (
        "greedy: disagrees 1 (100% wrong) · unconfirmed 1 (100% wrong) · no answer 0 (-) · agrees 2 (50% wrong) "
        "· AUROC triage 0.83, log-prob 0.50" in out
    )
