"""The Annotate tab's handlers, driven without a browser against a real store, and the tab's layout."""

from __future__ import annotations

import json
import types

import gradio as gr
import pytest

from cap_app.annotate.accounts import Identity
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_handlers import VIEW
from cap_app.ui.annotate_tab import build_annotate_tab
from tests.annotator.conftest import ACCOUNTS, QUESTION, as_user, make_result, write_jsonl


def view(values: tuple) -> dict:
    assert len(values) == len(VIEW)
    return dict(zip(VIEW, values, strict=True))


@pytest.fixture
def batch_file(tmp_path):
    """Four items: Janet with a right and a wrong refinement, three more with one each."""
    rows = [make_result("print(18)", "18").to_dict(), make_result("print(26)", "26").to_dict()]
    rows += [
        make_result(f"print({i})", str(i), question=f"What is {i}?", draft=f"{i}\nA: {i}", gold=str(i)).to_dict()
        for i in (1, 2, 3)
    ]
    return write_jsonl(tmp_path / "batch.jsonl", rows)


def loaded(store, batch_file, annotator="ann"):
    dropdown, report, *values = handlers.load_file(
        store, handlers.new_state(), str(batch_file), "", "draft", as_user(annotator)
    )
    return dropdown, report, view(tuple(values))


def judge(store, state, annotator, correct, vs_draft=None, first_wrong_step=None, note="", shown="null") -> dict:
    """A whole form filled in on the page, one field after the other as the page sends them: what the
    status, progress and radio buttons show after the last."""
    fields = {"correct": correct, "vs_draft": vs_draft, "first_wrong_step": first_wrong_step, "note": note}
    for field, value in fields.items():
        values = handlers.record_judgement(store, state, value, shown, as_user(annotator), field=field)
        reply = dict(zip(handlers.JUDGED, values, strict=True))
        if "Saved" not in reply["status"] and reply["status"]:
            break
    stored = json.loads(reply["stored"])
    return {**reply, "correct": stored["correct"], "vs_draft": stored["vs_draft"]}


def test_upload_loads_the_batch_and_shows_the_first_item(store, batch_file):
    dropdown, report, shown = loaded(store, batch_file)
    assert report == "Loaded the uploaded file. **batch\\.jsonl**: 4 items loaded."
    assert dropdown["value"] == shown["state"]["batch"] and len(dropdown["choices"]) == 1
    assert QUESTION.replace("'", "&#x27;") in shown["question"] and "Gold answer:</b> 18" in shown["question"]
    assert shown["draft"].count("<li") == 3 and '<li value="3">A: 26</li>' in shown["draft"]
    assert [label for label, _ in shown["refinement"]["choices"]] == [
        "1: greedy, answer 18 (file)",
        "2: greedy, answer 26 (file)",
    ]
    assert "cap-sbs" in shown["side_by_side"] and shown["trace"] == [[1, "print(18)", ""]]
    assert isinstance(shown["votes"], object) and shown["votes"] is not None
    assert (shown["correct"], shown["vs_draft"], shown["note"]) == (None, None, "")
    assert '>0</span> / <span class="cap-ann-total">4</span>' in shown["progress"]


def who(name: str):
    return Identity(name, ACCOUNTS[name], "page")


def test_paths_outside_the_allowed_folders_are_refused(store, batch_file, monkeypatch, tmp_path):
    monkeypatch.setenv("CAP_BATCH_DIRS", str(tmp_path / "elsewhere"))
    dropdown, report, *rest = handlers.load_file(
        store, handlers.new_state(), None, str(batch_file), "draft", as_user("boss")
    )
    assert "cannot be loaded" in report and all(isinstance(v, type(gr.skip())) for v in rest)
    monkeypatch.setenv("CAP_BATCH_DIRS", str(tmp_path))
    assert (
        "4 items loaded"
        in handlers.load_file(store, handlers.new_state(), None, str(batch_file), "draft", as_user("boss"))[1]
    )


def test_judging_saves_at_once_and_the_item_shows_it_again(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    state = shown["state"]
    assert judge(store, state, "ann", None)["status"] == ""  # leaving an empty form
    refused = judge(store, state, "ann", "no", "worse", 5)
    assert "The draft has 3 steps; the first wrong step cannot be 5." in refused["status"]
    saved = judge(store, state, "ann", "no", "worse", 2, "drops the muffins")
    assert "Saved: item 1, refinement 1 as ann: correct: no, vs draft: worse, first wrong step: 2" in saved["status"]
    assert ">1</span> / " in saved["progress"]
    assert (saved["correct"], saved["vs_draft"]) == ("no", "worse")  # the reply carries the stored form
    again = view(handlers.item_view(store, state, who("ann")))
    assert (again["correct"], again["vs_draft"], again["first_wrong_step"], again["note"]) == (
        "no",
        "worse",
        2,
        "drops the muffins",
    )
    other = view(handlers.item_view(store, state, who("bob")))
    assert other["correct"] is None  # judgements are per annotator


def test_one_field_saved_keeps_the_others_as_stored(store, batch_file):
    """Each click sends its own field: "n" then "w" in quick succession store both, whatever the
    page's other radio showed when the second was sent."""
    _, _, shown = loaded(store, batch_file)
    first = handlers.record_judgement(store, shown["state"], "no", shown["shown"], as_user("ann"), field="correct")
    second = handlers.record_judgement(store, shown["state"], "worse", shown["shown"], as_user("ann"), field="vs_draft")
    assert json.loads(first[2])["correct"] == "no" and json.loads(first[2])["shown"] == shown["shown"]
    assert (json.loads(second[2])["correct"], json.loads(second[2])["vs_draft"]) == ("no", "worse")
    refinement = store.refinements(store.item_at(shown["state"]["batch"], 0).id)[0]
    judgement = store.current_judgement(refinement.id, "ann")
    assert (judgement.correct, judgement.vs_draft, judgement.origin) == ("no", "worse", "page")


def test_a_refused_judgement_does_not_look_made(store, batch_file, tmp_path):
    unrefined = write_jsonl(tmp_path / "plain.jsonl", [{"question": "What is 2 + 2?", "draft": "2 + 2 = 4\nA: 4"}])
    _, _, plain = loaded(store, unrefined)
    refused = judge(store, plain["state"], "ann", "yes")
    assert "There is no refinement to judge yet" in refused["status"]
    assert (refused["correct"], refused["vs_draft"]) == (None, None)
    _, _, shown = loaded(store, batch_file)
    judge(store, shown["state"], "ann", "no")
    refused = judge(store, shown["state"], "ann", "yes", "better", 5)  # the draft has 3 steps
    assert "cannot be 5" in refused["status"]
    assert (refused["correct"], refused["vs_draft"]) == ("yes", "better")  # those two were saved before the step
    refusal = handlers.record_judgement(store, shown["state"], "maybe", "null", as_user("ann"), field="correct")
    assert "must be one of" in refusal[0] and json.loads(refusal[2])["correct"] == "yes"  # what is stored


def test_each_refinement_is_judged_on_its_own(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    second = view(handlers.choose_refinement(store, shown["state"], 1, as_user("ann")))
    assert second["state"]["refinement"] == 1 and second["trace"] == [[1, "print(26)", ""]]
    judge(store, second["state"], "ann", "no")
    judge(store, shown["state"], "ann", "yes")
    item = store.item_at(shown["state"]["batch"], 0)
    first_ref, second_ref = store.refinements(item.id)
    assert store.current_judgement(first_ref.id, "ann").correct == "yes"
    assert store.current_judgement(second_ref.id, "ann").correct == "no"


def test_a_judgement_is_of_the_item_the_page_showed_when_it_was_made(store, batch_file):
    """A key pressed right after a judgement ("w" then "j") may move the session to the next item
    before the judgement is saved (events run at once): the judgement carries the item the page
    showed. What the browser sends there is checked (test_page_state.py)."""
    _, _, shown = loaded(store, batch_file)
    moved = view(handlers.step(store, shown["state"], as_user("ann"), delta=1))  # processed first
    assert json.loads(shown["shown"]) == shown["state"] and moved["state"]["position"] == 1
    saved = handlers.record_judgement(store, moved["state"], "worse", shown["shown"], as_user("ann"), field="vs_draft")
    assert "Saved: item 1, refinement 1" in saved[0]
    assert json.loads(saved[2])["shown"] == shown["shown"]  # the page puts it in the radios only while it shows item 1
    first, second = (store.item_at(shown["state"]["batch"], i) for i in (0, 1))
    assert store.current_judgement(store.refinements(first.id)[0].id, "ann").vs_draft == "worse"
    assert store.current_judgement(store.refinements(second.id)[0].id, "ann") is None


def test_navigation_next_unjudged_wraps_and_stops_when_all_are_judged(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    state, ann = shown["state"], as_user("ann")
    assert view(handlers.step(store, state, ann, delta=-1))["position"] == 4  # wraps to the last item
    assert view(handlers.go_to(store, state, 99, ann))["position"] == 4
    judge(store, handlers.new_state(state["batch"], 1), "ann", "yes")
    assert view(handlers.next_unjudged(store, state, ann))["position"] == 3  # item 2 is judged
    for position in (0, 2, 3):
        judge(store, handlers.new_state(state["batch"], position), "ann", "unsure")
    done = view(handlers.next_unjudged(store, state, ann))
    assert "Every item of this batch is judged." in done["status"]
    assert ">4</span> / " in done["progress"]
    reopened = view(handlers.open_batch(store, handlers.new_state(), state["batch"], ann))
    assert reopened["position"] == 1


def test_touching_the_batch_dropdown_leaves_the_page_as_it_is(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    at_two = view(handlers.go_to(store, shown["state"], 2, as_user("ann")))
    touched = handlers.open_batch(store, at_two["state"], at_two["state"]["batch"], as_user("ann"))
    assert all(value == gr.skip() for value in touched)  # no view that could land after a judgement's reply


def test_undo_restores_the_previous_judgement_and_shows_its_item(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    batch_id = shown["state"]["batch"]
    judge(store, handlers.new_state(batch_id, 2), "ann", "yes")
    handlers.record_judgement(
        store, handlers.new_state(batch_id, 2), "better", "null", as_user("ann"), field="vs_draft"
    )
    undone = view(handlers.undo(store, handlers.new_state(batch_id, 0), as_user("ann")))
    assert undone["position"] == 3 and "Undid your change to item 3" in undone["status"]
    assert (undone["correct"], undone["vs_draft"]) == ("yes", None)
    view(handlers.undo(store, undone["state"], as_user("ann")))
    assert "Nothing to undo." in view(handlers.undo(store, undone["state"], as_user("ann")))["status"]


def test_items_table_pages_and_opens_the_clicked_row(store, batch_file, monkeypatch):
    monkeypatch.setattr(handlers, "PAGE_SIZE", 3)
    _, _, shown = loaded(store, batch_file)
    ann = as_user("ann")
    judge(store, shown["state"], "ann", "yes")
    assert [row[0] for row in handlers.items_page(store, shown["state"], 1, ann)] == [1, 2, 3]
    assert handlers.items_page(store, shown["state"], 2, ann) == [[4, "What is 3?", 1, "", "disagrees", "3", "26"]]
    assert handlers.items_page(store, shown["state"], 1, ann)[0][3] == "yes"
    assert handlers.items_page(store, shown["state"], 1, as_user("bob"))[0][3] == ""  # bob's own progress
    clicked = types.SimpleNamespace(index=[0, 1])  # what gr.SelectData carries
    assert view(handlers.open_from_table(store, shown["state"], 2, clicked, ann))["position"] == 4


def test_export_buttons_give_a_file_the_agreement_and_a_chart(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    for annotator, labels in (("ann", ["yes", "no"]), ("bob", ["yes", "yes"])):
        for index, label in enumerate(labels):
            judge(store, {**shown["state"], "refinement": index}, annotator, label)
    path, summary, figure = handlers.export_download(store, as_user("boss"), fmt="kto")
    assert [json.loads(line)["label"] for line in open(path)] == [True]  # the second program is contested
    assert "Cohen&#x27;s kappa ann vs bob on &#x27;correct&#x27; (2 shared): 0.000" in summary
    assert [trace.name for trace in figure.data] == ["ann", "bob"]
    assert list(figure.data[1].y) == [2, 0, 0]


def test_an_empty_export_says_why_and_shows_no_server_path(store, batch_file):
    _, _, shown = loaded(store, batch_file)
    judge(store, shown["state"], "ann", "yes")  # one program judged right, none wrong: no pair
    path, summary, _ = handlers.export_download(store, as_user("boss"), fmt="dpo")
    assert path is None
    assert (
        "wrote 0 rows to cap-dpo.jsonl. A DPO pair needs one question + draft with a program judged correct "
        "(yes) and another judged wrong (no): run another refinement of such an item and judge both programs."
    ) in summary
    assert "cap-export-" not in summary  # the server's temporary folder
    path, summary, _ = handlers.export_download(store, as_user("boss"), fmt="kto")
    assert path.endswith("cap-kto.jsonl") and "wrote 1 row to cap-kto.jsonl\n" in summary


def test_run_refinement_adds_a_real_engine_result(store, batch_file, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CAP_MODEL", tiny_model_dir)
    _, _, shown = loaded(store, batch_file)
    state = handlers.new_state(shown["state"]["batch"], 2)
    ran = view(handlers.run_refinement(store, state, tiny_model_dir, "greedy", 16, as_user("ann")))
    assert "Refinement added" in ran["status"], ran["status"]
    assert ran["state"]["refinement"] == 1 and len(ran["refinement"]["choices"]) == 2
    stored = store.refinements(store.item_at(state["batch"], 2).id)[-1]
    assert stored.source == "run" and stored.result.question == "What is 2?"
    refused = view(handlers.run_refinement(store, state, "some/other-model", "greedy", 16, as_user("ann")))
    assert "could not run" in refused["status"]


def test_the_tab_builds_inside_a_blocks_with_its_events(store):
    with gr.Blocks() as demo:
        with gr.Tab("Annotate"):
            build_annotate_tab(demo, store)
    config = demo.get_config_file()
    names = {d["api_name"] for d in config["dependencies"]}
    assert {
        "annotate_load_file",
        "annotate_record_judgement_correct",
        "annotate_record_judgement_note",
        "annotate_delete_batch",
        "annotate_undo",
        "annotate_next_unjudged",
        "annotate_export_download_dpo",
    } <= names
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert props["cap-ann-undo"]["value"] == "Undo last change (z)"  # one click is undone, not a whole judgement
    for number in (c["props"] for c in config["components"] if c["type"] == "number"):
        # the page shows an empty number as 0, and marks it red when that is below the minimum
        assert number.get("minimum") is None or (number.get("value") or 0) >= number["minimum"], number


def test_an_empty_exports_reason_wraps_and_no_empty_chart_is_shown(store, batch_file):
    """Issue 25 item 8: the reason is one long line (it was clipped in a <pre>), and an export with no
    judgement at all drew a chart with empty axes below it."""
    loaded(store, batch_file)
    path, summary, chart = handlers.export_download(store, as_user("boss"), fmt="dpo")
    assert path is None and "wrote 0 rows to cap-dpo.jsonl. A DPO pair needs" in summary
    assert "white-space: pre-wrap" in summary
    assert chart is None


def test_item_and_first_wrong_step_open_empty_and_take_typed_numbers(store, batch_file):
    """Issue 25 item 7: both fields opened showing 0 (Gradio's number field shows an empty value as 0),
    which is neither an item nor a step: they are text fields, empty until there is a value."""
    with gr.Blocks() as demo:
        build_annotate_tab(demo, store)
    props = {c["props"].get("elem_id"): c for c in demo.get_config_file()["components"]}
    for elem_id in ("cap-ann-position", "cap-ann-step"):
        assert props[elem_id]["type"] == "textbox" and props[elem_id]["props"].get("value") in (None, ""), elem_id
    _, _, shown = loaded(store, batch_file)
    state, ann = shown["state"], as_user("ann")
    assert view(handlers.go_to(store, state, " 3 ", ann))["position"] == 3
    assert view(handlers.go_to(store, state, "", ann))["position"] == 1
    assert "must be a number" in view(handlers.go_to(store, state, "three", ann))["status"]
    judged = judge(store, state, "ann", "no", "worse", "2", shown=shown["shown"])
    assert "first wrong step: 2" in judged["status"]
    assert view(handlers.go_to(store, state, "1", ann))["first_wrong_step"] == 2
    for typed, refusal in (("two", "must be a number"), ("0", "1 or more"), ("1.5", "whole step number")):
        reply = handlers.record_judgement(store, state, typed, shown["shown"], ann, field="first_wrong_step")
        assert refusal in reply[0], (typed, reply[0])
    cleared = handlers.record_judgement(store, state, "", shown["shown"], ann, field="first_wrong_step")
    assert "first wrong step: -" in cleared[0]


def test_load_says_which_source_it_loaded_and_refuses_both_at_once(store, batch_file, tmp_path, monkeypatch):
    """Issue 25 item 10: with a file in Upload, a typed path was silently ignored and Load repeated
    the upload's report."""
    monkeypatch.setenv("CAP_BATCH_DIRS", str(tmp_path))
    other = write_jsonl(tmp_path / "other.jsonl", [make_result("print(12)", "12", question="What is 12?").to_dict()])
    boss = as_user("boss")
    uploaded = handlers.load_file(store, handlers.new_state(), str(batch_file), "", "draft", boss)[1]
    assert uploaded.startswith("Loaded the uploaded file.") and "batch\\.jsonl" in uploaded
    both = handlers.load_file(store, handlers.new_state(), str(batch_file), str(other), "draft", boss)
    assert "Both a file in Upload and a path are given" in both[1] and "nothing was loaded" in both[1]
    assert len(store.list_batches()) == 1
    by_path = handlers.load_file(store, handlers.new_state(), None, str(other), "draft", boss)[1]
    assert by_path.startswith("Loaded the path on the server.") and "other\\.jsonl" in by_path
    with gr.Blocks() as demo:
        build_annotate_tab(demo, store)
    config = demo.get_config_file()
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    clears = {
        (d["targets"][0][1], d["outputs"][0])
        for d in config["dependencies"]
        if d["targets"][0][1] in ("upload", "change") and len(d["outputs"]) == 1
    }
    assert {("upload", ids["cap-ann-path"]), ("change", ids["cap-ann-upload"])} <= clears  # each clears the other


def test_a_reload_reopens_the_batch_and_item_and_with_none_open_the_page_says_to_pick_one(store, batch_file):
    """Issue 25 item 11: a reload forgot the batch, and an item number typed then did nothing, silently."""
    _, _, shown = loaded(store, batch_file)
    ann, bob, fresh = as_user("ann"), as_user("bob"), handlers.new_state()
    moved = view(handlers.go_to(store, shown["state"], 3, ann))
    handlers.remember(store, moved["state"], ann)  # the page's state.change
    dropdown, *values = handlers.reopen(store, fresh, ann)  # the reloaded page's load
    reopened = view(tuple(values))
    assert dropdown["value"] == moved["state"]["batch"] and reopened["position"] == 3
    assert reopened["state"] == moved["state"] and "Reopened batch.jsonl" in reopened["status"]
    dropdown, *values = handlers.reopen(store, fresh, bob)  # bob had nothing open: the list, nothing opened
    assert dropdown["value"] is None and dropdown["choices"]
    assert all(isinstance(v, type(gr.skip())) for v in values)
    dropdown, *values = handlers.reopen(store, fresh, as_user(None))  # not signed in: nothing
    assert dropdown["choices"] == [] and all(isinstance(v, type(gr.skip())) for v in values)
    for values in (
        handlers.go_to(store, fresh, 3, ann),
        handlers.step(store, fresh, ann, delta=1),
        handlers.next_unjudged(store, fresh, ann),
    ):
        assert "No batch is open: pick one in Batch above" in view(values)["status"]
    handlers.delete_batch(store, moved["state"], "batch.jsonl", as_user("boss"))
    dropdown, *values = handlers.reopen(store, fresh, ann)  # deleted since: nothing reopened
    assert dropdown["value"] is None and all(isinstance(v, type(gr.skip())) for v in values)
