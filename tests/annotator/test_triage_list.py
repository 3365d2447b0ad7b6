"""Triage: the item list sorted and filtered by the refiner's verdict (engine/triage.py's order), in
the store's SQL and through the Annotate tab's handlers, on a batch whose verdicts and confidences
are known."""

from __future__ import annotations

import dataclasses
import types

import pytest

from cap_app.annotate.store import NOT_REFINED, StoreError
from cap_app.engine.triage import TRIAGE_EXPLANATION, TRIAGE_ORDER, triage_key
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_handlers import VIEW
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
    rows = store.items_page(known_batch, "ann", 0, 100, order="triage")
    assert numbers(rows) == TRIAGED_NUMBERS
    known = [(row.verdict, row.confidence) for row in rows if row.verdict]
    assert known == sorted(known, key=lambda vc: triage_key(*vc))  # the SQL agrees with engine.triage
    assert numbers(store.items_page(known_batch, "ann", 0, 100)) == list(range(1, 9))  # item order by default
    assert numbers(store.items_page(known_batch, "ann", 2, 3, order="triage")) == TRIAGED_NUMBERS[2:5]


def test_each_row_carries_the_newest_refinements_verdict_and_answers(store, known_batch):
    first, _, third, *_ = store.items_page(known_batch, "ann", 0, 3)
    assert (first.verdict, first.program_answer, first.draft_answer, first.confidence) == ("agrees", "1", "26", -0.1)
    assert (third.verdict, third.program_answer, third.refinements) == (None, None, 0)
    item = store.item_at(known_batch, 0)
    store.add_refinement(item.id, known_result(1, "disagrees", -3.0), "run")  # a newer refinement decides
    assert store.items_page(known_batch, "ann", 0, 1, order="triage")[0].item.position == 0


def test_the_store_filters_by_verdict(store, known_batch):
    assert numbers(store.items_page(known_batch, "ann", 0, 100, verdict="disagrees")) == [2, 5]
    assert numbers(store.items_page(known_batch, "ann", 0, 100, order="triage", verdict="disagrees")) == [5, 2]
    assert numbers(store.items_page(known_batch, "ann", 0, 100, verdict=NOT_REFINED)) == [3]
    assert numbers(store.items_page(known_batch, "ann", 0, 100, verdict="unconfirmed")) == [4, 7]
    for bad in ("'; DROP TABLE items; --", "Agrees"):
        with pytest.raises(StoreError, match="Unknown verdict filter"):
            store.items_page(known_batch, "ann", 0, 10, verdict=bad)
    with pytest.raises(StoreError, match="Unknown item order"):
        store.items_page(known_batch, "ann", 0, 10, order="verdict DESC")


def test_next_unjudged_follows_the_triage_order_and_wraps(store, known_batch):
    position = lambda number: number - 1  # noqa: E731
    assert store.next_unjudged(known_batch, "ann", -1, "triage") == position(5)  # the first in triage order
    assert store.next_unjudged(known_batch, "ann", position(5), "triage") == position(2)
    refinement = store.refinements(store.item_at(known_batch, position(7)).id)[0]
    store.judge(refinement.id, "ann", correct="no")
    assert store.next_unjudged(known_batch, "ann", position(2), "triage") == position(4)  # 7 is judged
    assert store.next_unjudged(known_batch, "ann", position(3), "triage") == position(5)  # wraps round
    assert store.next_unjudged(known_batch, "bob", position(2), "triage") == position(7)  # bob's own
    assert store.next_unjudged(known_batch, "ann", position(5), "position") == position(6)


def state_at(batch_id: int, number: int) -> dict:
    return handlers.new_state(batch_id, number - 1)


def test_the_tabs_items_table_shows_verdicts_and_sorts_and_filters(store, known_batch):
    ann, state = as_user("ann"), state_at(known_batch, 1)
    by_triage = handlers.items_page(store, state, 1, ann, None, "triage", "all")
    assert [row[0] for row in by_triage] == TRIAGED_NUMBERS
    assert by_triage[0][4:] == ["disagrees", "5", "26"]  # the verdict, the program's answer beside the draft's
    assert by_triage[-1][2:] == [0, "", "", "", ""]  # not refined yet
    assert [row[0] for row in handlers.items_page(store, state, 1, ann, None, "position", "unconfirmed")] == [4, 7]
    assert [row[4] for row in handlers.items_page(store, state, 1, ann, None, "triage", "no_answer")] == ["no answer"]
    assert handlers.items_page(store, state, 1, ann, None, "triage", "bogus") == []  # refused, nothing listed
    assert handlers.items_page(store, state, 1, as_user(None), None, "triage", "all") == []  # not signed in


def test_a_click_in_the_sorted_and_filtered_table_opens_that_item(store, known_batch, monkeypatch):
    monkeypatch.setattr(handlers, "PAGE_SIZE", 3)
    clicked = types.SimpleNamespace(index=[1, 0])  # the second row, as gr.SelectData carries it
    opened = handlers.open_from_table(store, state_at(known_batch, 1), 2, clicked, as_user("ann"), None, "triage")
    assert opened[VIEW.index("position")] == TRIAGED_NUMBERS[4]
    filtered = handlers.open_from_table(
        store, state_at(known_batch, 1), 1, clicked, as_user("ann"), None, "triage", "disagrees"
    )
    assert filtered[VIEW.index("position")] == 2


def test_next_unjudged_and_opening_a_batch_follow_the_pages_order(store, known_batch):
    ann = as_user("ann")
    position = lambda values: values[VIEW.index("position")]  # noqa: E731
    opened = handlers.open_batch(store, handlers.new_state(), known_batch, ann, None, "triage")
    assert position(opened) == TRIAGED_NUMBERS[0]
    assert position(handlers.open_batch(store, handlers.new_state(), known_batch, ann, None, "position")) == 1
    state = opened[VIEW.index("state")]
    seen = []
    for _ in range(len(KNOWN)):
        values = handlers.next_unjudged(store, state, ann, None, "triage")
        state = values[VIEW.index("state")]
        seen.append(position(values))
    assert seen == TRIAGED_NUMBERS[1:] + TRIAGED_NUMBERS[:1]  # in triage order, round to the first again
    assert position(handlers.next_unjudged(store, state_at(known_batch, 5), ann, None, "position")) == 6
    refused = handlers.next_unjudged(store, state, ann, None, "DROP")
    assert "Unknown order" in refused[VIEW.index("status")]


def test_the_tab_explains_the_triage_order_and_offers_it_by_default(store):
    import gradio as gr

    from cap_app.ui.annotate_tab import build_annotate_tab

    with gr.Blocks() as demo:
        build_annotate_tab(demo, store)
    props = {c["props"].get("elem_id"): c["props"] for c in demo.get_config_file()["components"]}
    assert props["cap-ann-triage-explanation"]["value"] == TRIAGE_EXPLANATION
    assert props["cap-ann-order"]["value"] == "triage"
    assert [value for _, value in props["cap-ann-filter"]["choices"]][1:5] == list(TRIAGE_ORDER)
