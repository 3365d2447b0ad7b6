"""Triage: the item list sorted and filtered by the refiner's verdict (engine/triage.py's order), in
the store's SQL and through the Annotate tab's handlers, on a batch whose verdicts and confidences
are known."""

from __future__ import annotations

import dataclasses

import pytest

from cap_app.annotate.store import NOT_REFINED, StoreError
from cap_app.engine.triage import TRIAGE_EXPLANATION, triage_key
from cap_app.ui import annotate_handlers as handlers
from tests.annotator.conftest import as_user, make_result, write_jsonl

# (verdict, confidence) of each item's newest refinement, in position order; None: no refinement.
KNOWN = [
    ("agrees", -0.1),  # 1
    ("disagrees", -0.5),  # 2
    None,  # 3
    ("unconfirmed", None),  # 4
    ("disagrees", -0.9),  # 5
    ("no_answer", -0.2),  # 6
    ("unconfirmed", -0.3),  # 7
    ("agrees", -2.0),  # 8
]
# engine.triage's order: disagrees (lowest confidence first), unconfirmed (unknown confidence last),
# no answer, agrees; the item without a refinement after all.
TRIAGED_NUMBERS = [5, 2, 7, 4, 6, 8, 1, 3]


def known_result(number: int, verdict: str, logprob: float | None):
    """A refinement of item `number` with this verdict and mean log-prob (and a program answer of its own)."""
    result = make_result(f"print({number})", str(number), question=f"Question {number}?", draft=f"{number}\nA: 26")
    candidate = dataclasses.replace(result.candidates[0], logprob=logprob)
    return dataclasses.replace(result, verdict=verdict, candidates=[candidate])


@pytest.fixture
def known_batch(tmp_path, store):
    """The batch of KNOWN, loaded as an annotator loads a file (the unrefined item has no result)."""
    rows = []
    for number, known in enumerate(KNOWN, start=1):
        if known is None:
            rows.append({"question": f"Question {number}?", "draft": f"{number}\nA: 26"})
        else:
            rows.append(known_result(number, *known).to_dict())
    dropdown, report, *_ = handlers.load_file(
        store, handlers.new_state(), str(write_jsonl(tmp_path / "known.jsonl", rows)), "", "draft", as_user("ann")
    )
    assert "8 items" in report, report
    return dropdown["value"]


def numbers(rows) -> list[int]:
    return [row.item.position + 1 for row in rows]


def test_the_store_sorts_a_batch_in_the_engines_triage_order(store, known_batch):
    rows = store.triage_page(known_batch, "ann", 0, 100, order="triage")
    assert numbers(rows) == TRIAGED_NUMBERS
    known = [(row.verdict, row.confidence) for row in rows if row.verdict]
    assert known == sorted(known, key=lambda vc: triage_key(*vc))  # the SQL agrees with engine.triage
    assert numbers(store.triage_page(known_batch, "ann", 0, 100)) == list(range(1, 9))  # item order by default
    assert numbers(store.triage_page(known_batch, "ann", 2, 3, order="triage")) == TRIAGED_NUMBERS[2:5]


def test_each_row_carries_the_newest_refinements_verdict_and_answers(store, known_batch):
    first, _, third, *_ = store.triage_page(known_batch, "ann", 0, 3)
    assert (first.verdict, first.program_answer, first.draft_answer, first.confidence) == ("agrees", "1", "26", -0.1)
    assert (third.verdict, third.program_answer, third.refinements) == (None, None, 0)
    item = store.item_at(known_batch, 0)
    store.add_refinement(item.id, known_result(1, "disagrees", -3.0), "run")  # a newer refinement decides
    assert store.triage_page(known_batch, "ann", 0, 1, order="triage")[0].item.position == 0


def test_the_store_filters_by_verdict(store, known_batch):
    assert numbers(store.triage_page(known_batch, "ann", 0, 100, verdict="disagrees")) == [2, 5]
    assert numbers(store.triage_page(known_batch, "ann", 0, 100, order="triage", verdict="disagrees")) == [5, 2]
    assert numbers(store.triage_page(known_batch, "ann", 0, 100, verdict=NOT_REFINED)) == [3]
    assert [store.count_items(known_batch, v) for v in ("all", "unconfirmed", "no_answer", NOT_REFINED)] == [8, 2, 1, 1]
    for bad in ("'; DROP TABLE items; --", "Agrees"):
        with pytest.raises(StoreError, match="Unknown verdict filter"):
            store.triage_page(known_batch, "ann", 0, 10, verdict=bad)
    with pytest.raises(StoreError, match="Unknown item order"):
        store.triage_page(known_batch, "ann", 0, 10, order="verdict DESC")


def test_next_unjudged_follows_the_triage_order_and_wraps(store, known_batch):
    position = lambda number: number - 1  # noqa: E731
    assert store.next_unjudged_in_order(known_batch, "ann", -1) == position(5)  # the first in triage order
    assert store.next_unjudged_in_order(known_batch, "ann", position(5)) == position(2)
    refinement = store.refinements(store.item_at(known_batch, position(7)).id)[0]
    store.judge(refinement.id, "ann", correct="no")
    assert store.next_unjudged_in_order(known_batch, "ann", position(2)) == position(4)  # 7 is judged
    assert store.next_unjudged_in_order(known_batch, "ann", position(3)) == position(5)  # wraps round
    assert store.next_unjudged_in_order(known_batch, "bob", position(2)) == position(7)  # bob's own
    assert store.next_unjudged_in_order(known_batch, "ann", position(5), "position") == position(6)
