"""Accounts and roles: who a call is comes from the request's signed-in identity, never from
anything the caller types, and every annotator endpoint checks it and its role on the server."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import gradio as gr
import pytest

from cap_app.annotate import accounts
from cap_app.annotate.store import Store
from cap_app.ui import annotate_handlers as handlers
from cap_app.ui.annotate_tab import build_annotate_tab
from tests.annotator.conftest import PASSWORD, as_user, make_result, write_jsonl
from tests.helpers.paths import ROOT


@pytest.fixture
def batch_file(tmp_path):
    rows = [make_result("print(18)", "18", question=f"Question {i}?").to_dict() for i in range(3)]
    return write_jsonl(tmp_path / "batch.jsonl", rows)


def opened(store, batch_file, name="ann") -> dict:
    _, report, *values = handlers.load_file(store, handlers.new_state(), str(batch_file), "", "draft", as_user(name))
    assert "loaded" in report, report
    return dict(zip(handlers.VIEW, values, strict=True))


def judge(store, page, name, field, value, origin="page") -> str:
    return handlers.record_judgement(store, page["state"], value, page["shown"], as_user(name, origin), field=field)[0]


def all_judgements(store) -> list[tuple]:
    with store._connect() as conn:
        return [
            tuple(row) for row in conn.execute("SELECT annotator, correct, vs_draft, origin, undone_at FROM judgements")
        ]


def test_another_annotator_can_neither_read_nor_overwrite_nor_undo_your_judgements(store, batch_file):
    ann, bob = opened(store, batch_file, "ann"), opened(store, batch_file, "bob")
    assert "Saved" in judge(store, ann, "ann", "correct", "no")
    seen_by_bob = dict(
        zip(handlers.VIEW, handlers.item_view(store, bob["state"], accounts.identify(as_user("bob"))), strict=True)
    )
    assert seen_by_bob["correct"] is None  # bob sees his own form, empty
    assert "as bob" in judge(store, bob, "bob", "correct", "yes", origin="api")
    for _ in range(3):
        handlers.undo(store, bob["state"], as_user("bob"))
    rows = all_judgements(store)
    assert ("ann", "no", None, "page", None) in rows  # ann's judgement: untouched, current
    assert [row[:4] for row in rows if row[0] == "bob"] == [("bob", "yes", None, "api")] and rows[-1][4] is not None
    refinement = store.refinements(store.item_at(ann["state"]["batch"], 0).id)[0]
    assert store.current_judgement(refinement.id, "ann").correct == "no"


def test_no_endpoint_takes_a_name_from_the_caller(store):
    """The identity is the request's: nothing the page or an API client sends can name an annotator."""
    with gr.Blocks() as demo:
        build_annotate_tab(demo, store)
    config = demo.get_config_file()
    props = {c["id"]: c["props"] for c in config["components"]}
    for dependency in config["dependencies"]:
        if (dependency.get("api_name") or "").startswith("annotate_"):
            for i in dependency["inputs"]:
                assert "annotator" not in (props[i].get("label") or "").lower(), dependency["api_name"]
                assert props[i].get("elem_id") != "cap-ann-name", dependency["api_name"]


@pytest.mark.parametrize("caller", [None, "ann", "nobody"])
def test_export_is_refused_to_anyone_but_an_admin(store, batch_file, caller):
    page = opened(store, batch_file)
    judge(store, page, "ann", "correct", "yes")
    for fmt in ("csv", "kto", "dpo"):
        path, summary, chart = handlers.export_download(store, as_user(caller), fmt=fmt)
        assert path is None and chart is None  # no file, no chart of everyone's labels
        assert "kappa" not in summary and "current judgements" not in summary  # no summary of anyone's
        assert any(word in summary for word in ("Only an admin", "Sign in", "no longer exists"))


def test_an_admin_export_names_who_judged_and_from_where(store, batch_file, tmp_path):
    page = opened(store, batch_file)
    judge(store, page, "ann", "correct", "yes")
    judge(store, opened(store, batch_file, "bob"), "bob", "correct", "yes", origin="api")
    path, summary, _ = handlers.export_download(store, as_user("boss"), fmt="csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["annotator"], r["origin"], r["correct"]) for r in rows] == [
        ("ann", "page", "yes"),
        ("bob", "api", "yes"),
    ]
    assert "Cohen" in summary
    path, _, _ = handlers.export_download(store, as_user("boss"), fmt="kto")
    assert json.loads(open(path).readline())["meta"]["judged_by"] == ["ann (page)", "bob (api)"]


def test_only_an_admin_loads_a_server_path_or_deletes_a_batch(store, batch_file, monkeypatch):
    monkeypatch.setenv("CAP_BATCH_DIRS", str(batch_file.parent))
    _, report, *rest = handlers.load_file(store, handlers.new_state(), None, str(batch_file), "draft", as_user("ann"))
    assert "Only an admin may load files on the server" in report and store.list_batches() == []
    page = opened(store, batch_file, "ann")  # an upload is any annotator's
    judge(store, page, "ann", "correct", "no")
    refused = handlers.delete_batch(store, page["state"], "batch.jsonl", as_user("ann"))
    assert "Only an admin may delete batches" in refused[-2] and len(store.list_batches()) == 1
    assert "Type the batch" in handlers.delete_batch(store, page["state"], "", as_user("boss"))[-2]
    deleted = handlers.delete_batch(store, page["state"], "batch.jsonl", as_user("boss"))
    assert "Deleted batch batch.jsonl" in deleted[-2] and store.list_batches() == [] and all_judgements(store) == []


def test_a_caller_who_is_not_signed_in_gets_nothing_and_changes_nothing(store, batch_file):
    page = opened(store, batch_file)
    nobody = as_user(None)
    assert handlers.refresh_batches(store, page["state"], nobody)["choices"] == []
    assert "Sign in" in handlers.load_file(store, handlers.new_state(), str(batch_file), "", "draft", nobody)[1]
    for values in (
        handlers.step(store, page["state"], nobody, delta=1),
        handlers.go_to(store, page["state"], 2, nobody),
        handlers.next_unjudged(store, page["state"], nobody),
        handlers.undo(store, page["state"], nobody),
    ):
        shown = dict(zip(handlers.VIEW, values, strict=True))
        assert "Sign in" in shown["status"] and shown["question"] == "" and shown["state"] == page["state"]
    assert "Sign in" in handlers.record_judgement(store, page["state"], "yes", "null", nobody, field="correct")[0]
    assert handlers.items_page(store, page["state"], 1, nobody) == []
    assert all_judgements(store) == []


def test_a_removed_account_loses_access_at_its_next_call(store, batch_file, signed_in_accounts):
    page = opened(store, batch_file, "bob")
    accounts.remove_user("bob", signed_in_accounts)
    assert "no longer exists" in judge(store, page, "bob", "correct", "yes")
    assert all_judgements(store) == []


def test_local_use_without_accounts_stores_under_the_local_name(store, batch_file, monkeypatch):
    monkeypatch.delenv("CAP_USERS")
    monkeypatch.setenv("CAP_LOCAL_NAME", "me")
    accounts.set_bind_host("127.0.0.1")
    page = opened(store, batch_file, None)
    assert "as me" in judge(store, page, None, "correct", "yes")
    assert "Local use without accounts" in handlers.access_html(as_user(None))
    assert "stored under the local name me" in handlers.access_html(as_user(None))


@pytest.mark.parametrize("where", ["0.0.0.0", "space"])
def test_reachable_from_elsewhere_without_accounts_the_tab_stores_nothing_and_says_how(
    store, batch_file, monkeypatch, where
):
    page = opened(store, batch_file)  # loaded while accounts were on
    monkeypatch.delenv("CAP_USERS")
    if where == "space":
        monkeypatch.setenv("SPACE_ID", "someone/cap")
        accounts.set_bind_host("127.0.0.1")
    else:
        accounts.set_bind_host(where)
    try:
        message = handlers.record_judgement(store, page["state"], "yes", "null", as_user("ann"), field="correct")[0]
        assert "nothing is stored" in message and "CAP_USERS" in message and "hf_oauth" in message
        assert "nothing is stored" in handlers.access_html(as_user(None))
        assert (
            "nothing is stored"
            in handlers.load_file(store, handlers.new_state(), str(batch_file), "", "draft", as_user(None))[1]
        )
        assert all_judgements(store) == []
    finally:
        accounts.set_bind_host(None)


def test_on_a_space_the_hugging_face_account_and_the_allow_lists_decide(store, batch_file, monkeypatch):
    import gradio.oauth

    monkeypatch.delenv("CAP_USERS")
    monkeypatch.setenv("SYSTEM", "spaces")  # what a Space sets, with the OAuth variables of `hf_oauth: true`
    monkeypatch.setenv("SPACE_ID", "someone/cap")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "x")
    for name in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL"):
        monkeypatch.setattr(gradio.oauth, name, "https://huggingface.co" if name == "OPENID_PROVIDER_URL" else "x")
    monkeypatch.setenv("CAP_ADMINS", "Boss")
    monkeypatch.setenv("CAP_ANNOTATORS", "ann, bob")

    def profile(username: str) -> gr.OAuthProfile:
        return gr.OAuthProfile({"name": username, "preferred_username": username, "profile": "", "picture": ""})

    request = as_user(None)
    with pytest.raises(accounts.Refused, match="Sign in with Hugging Face"):
        accounts.identify(request, None)
    assert accounts.identify(request, profile("ann")).role == "annotator"
    assert accounts.identify(request, profile("boss")).role == "admin"
    with pytest.raises(accounts.Refused, match="not on this Space's list of annotators"):
        accounts.identify(request, profile("mallory"))
    monkeypatch.setenv("CAP_ANNOTATORS", "")
    assert accounts.identify(request, profile("mallory")).role == "annotator"  # empty list: anyone signed in
    with gr.Blocks() as demo:
        build_annotate_tab(demo, store)
    ids = [c["props"].get("elem_id") for c in demo.get_config_file()["components"]]
    assert "cap-ann-login" in ids and demo.expects_oauth  # the Sign in with Hugging Face button, OAuth routes on


def run_users(*args: str, stdin: str = "", users_file=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cap_app", "users", *args]
    if users_file is not None:
        command += ["--file", str(users_file)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_users_command_keeps_only_a_slow_salted_hash_and_never_takes_a_password_argument(tmp_path):
    users = tmp_path / "team" / "users.json"
    added = run_users("add", "alice", "--role", "admin", stdin=PASSWORD + "\n", users_file=users)
    assert added.returncode == 0, added.stderr
    assert run_users("add", "bob", stdin="short\n", users_file=users).returncode == 2  # too short
    assert run_users("add", "bob", stdin=PASSWORD + "\n", users_file=users).returncode == 0
    assert run_users("list", users_file=users).stdout.splitlines() == ["alice\tadmin", "bob\tannotator"]
    text = users.read_text()
    assert PASSWORD not in text and json.loads(text)["users"]["alice"]["hash"].startswith("$argon2id$")
    assert json.loads(text)["users"]["alice"]["hash"] != json.loads(text)["users"]["bob"]["hash"]  # salted
    assert users.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert accounts.check_password.__name__ and _checks(users, "alice", PASSWORD)
    assert not _checks(users, "alice", PASSWORD + "x") and not _checks(users, "eve", PASSWORD)
    assert "unrecognized arguments" in run_users("add", "carol", "--password", "x", users_file=users).stderr
    assert run_users("remove", "bob", users_file=users).returncode == 0
    assert run_users("list", users_file=users).stdout.splitlines() == ["alice\tadmin"]


def _checks(users_file, name: str, password: str) -> bool:
    import os

    before = os.environ.get("CAP_USERS")
    os.environ["CAP_USERS"] = str(users_file)
    try:
        return accounts.check_password(name, password)
    finally:
        os.environ["CAP_USERS"] = before or ""


def test_gradio_login_is_the_users_file_check(monkeypatch, signed_in_accounts):
    accounts.set_bind_host("0.0.0.0")
    try:
        assert accounts.gradio_auth() is accounts.check_password
        assert accounts.check_password("boss", PASSWORD) and not accounts.check_password("boss", "wrong")
        monkeypatch.delenv("CAP_USERS")
        assert accounts.gradio_auth() is None
    finally:
        accounts.set_bind_host(None)


def test_a_store_judgement_carries_identity_and_origin(store, batch_file):
    page = opened(store, batch_file)
    judge(store, page, "ann", "vs_draft", "same", origin="api")
    [row] = Store(store.path).current_judgements()
    assert (row.judgement.annotator, row.judgement.origin, row.judgement.vs_draft) == ("ann", "api", "same")
