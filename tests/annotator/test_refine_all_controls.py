"""The Annotate tab's Refine all controls (handlers driven without a browser, real store and engine,
a stub model: tests/helpers/slow_backend.py): only admins start or stop, everyone signed in sees the
progress line, and its timer ticks often while the job runs (slowly otherwise). The real offline default runs through
the served page in test_served_refine_all.py."""

from __future__ import annotations

import json
import threading

import gradio as gr
import pytest

from cap_app.annotate import batch_refinement
from cap_app.annotate.accounts import Identity
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_handlers import REFRESH_IDLE_S, REFRESH_RUNNING_S
from cap_app.ui.hosting import model_choices
from tests.annotator.conftest import RIGHT_PROGRAM, as_user, make_result, write_jsonl
from tests.helpers.slow_backend import SlowBackend

WAIT_S = 60
ANNOTATOR = Identity("ann", "annotator", "page")


@pytest.fixture
def three_items(tmp_path, store):
    """An open batch of three drafts nobody has refined yet."""
    rows = [
        {"question": f"Janet has {n} eggs and eats 3. How many are left?", "draft": f"{n} - 3 = 1\nA: 1"}
        for n in (5, 6, 7)
    ]
    _, report, *values = handlers.load_file(
        store, handlers.new_state(), str(write_jsonl(tmp_path / "three.jsonl", rows)), "", "draft", as_user("boss")
    )
    assert "3 items" in report, report
    return values[handlers.VIEW.index("state")]


@pytest.fixture
def stub_model(monkeypatch):
    """The job loads this instead of a model; its generations wait for `gate`."""
    backend = SlowBackend(gate=threading.Event())
    monkeypatch.setattr("cap_app.backends.get_backend", lambda *args, **kwargs: backend)
    yield backend
    backend.gate.set()


def start(store, state, who: str):
    return handlers.refine_all(store, state, model_choices()[0], "greedy", 64, as_user(who))


def test_only_an_admin_may_start_or_stop_and_others_are_told_why(store, three_items, stub_model):
    line, timer = start(store, three_items, "ann")
    assert "Only an admin may start or stop the refinement of a whole batch; you are signed in as ann" in line
    assert "Refine all has not run on this batch: 0 / 3 items refined." in line and timer.value == REFRESH_IDLE_S
    assert store.refine_job(three_items["batch"]) is None  # nothing started
    line, _ = start(store, three_items, None)
    assert "Sign in" in line or "signed in" in line
    assert "items refined" not in line  # no progress for someone not signed in
    assert store.refine_job(three_items["batch"]) is None
    line, _ = handlers.stop_refine_all(store, three_items, as_user("bob"))
    assert "Only an admin may start or stop" in line


def test_an_admin_starts_and_stops_and_everyone_sees_the_progress(store, three_items, stub_model):
    line, timer = start(store, three_items, "boss")
    assert "Refine all is running" in line and timer.value == REFRESH_RUNNING_S  # refreshed often while it runs
    line, timer = handlers.refine_all_status(store, three_items, as_user("ann"))  # another annotator
    assert "Refine all is running" in line and "(started by boss)" in line and timer.value == REFRESH_RUNNING_S
    line, timer = handlers.stop_refine_all(store, three_items, as_user("boss"))
    assert "Refine all is stopped" in line and timer.value == REFRESH_IDLE_S
    assert batch_refinement.wait(three_items["batch"], WAIT_S)
    stub_model.gate.set()
    line, timer = start(store, three_items, "boss")  # goes on with the page's settings
    assert batch_refinement.wait(three_items["batch"], WAIT_S)
    line, timer = handlers.refine_all_status(store, three_items, as_user("ann"))
    assert "Refine all is done: 3 / 3 items refined" in line and timer.value == REFRESH_IDLE_S
    rows = handlers.items_page(store, three_items, 1, as_user("ann"), None, "triage", "all")
    assert all(row[2] == 1 and row[4] and row[5] == "18" for row in rows), rows  # the stub's program prints 18


def test_without_an_open_batch_nothing_starts(store, stub_model):
    line, timer = start(store, handlers.new_state(), "boss")
    assert handlers.NO_BATCH in line and not timer.active


def test_an_item_shown_before_it_had_a_refinement_is_shown_again_when_one_arrives(store, three_items):
    ann = as_user("ann")

    shown = dict(zip(handlers.VIEW, handlers.item_view(store, three_items, ANNOTATOR), strict=True))

    def tick(shown_refinement, page_shows=shown["shown"]):
        values = handlers.show_arrived_refinement(store, three_items, page_shows, shown_refinement, ann)
        return dict(zip(handlers.VIEW, values, strict=True))

    assert "No refinement yet" in shown["verdict"]
    assert all(value == gr.skip() for value in tick(None).values())  # nothing new yet
    item = store.item_at(three_items["batch"], three_items["position"])
    store.add_refinement(item.id, make_result(RIGHT_PROGRAM, "2", question=item.question, draft=item.draft), "batch")
    arrived = tick(None)
    assert "A refinement arrived" in arrived["status"] and "No refinement yet" not in arrived["verdict"]
    assert arrived["refinement"]["value"] == 0 and len(arrived["refinement"]["choices"]) == 1
    assert all(value == gr.skip() for value in tick(0).values())  # a refinement on show is never redrawn
    moved = json.dumps(handlers.new_state(three_items["batch"], three_items["position"] + 1))
    assert all(value == gr.skip() for value in tick(None, moved).values())  # the page has moved on since
