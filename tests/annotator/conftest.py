"""Batches for the annotator tests: real GSM8K rows, and refinement lines in the shape that
`python -m cap_app refine --output` writes (RefinementResult.to_dict, one JSON object a line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cap_app.annotate.store import Store
from cap_app.engine.results import Candidate, RefinementResult
from cap_app.sandbox.result import ExecResult, TraceStep

QUESTION = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
    "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per "
    "fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
DRAFT = (
    "Janet eats 3 ducks eggs for breakfast every morning and she sells the rest so she has 16 - 3 = "
    "<<16-3=13>>13 ducks eggs left\nShe has 13 ducks eggs and she sells 2 each day so she makes 13 * 2 = "
    "$<<13*2=26>>26\nA: 26"
)
RIGHT_PROGRAM = "eggs = 16\nbreakfast = 3\nmuffins = 4\nleft = eggs - breakfast - muffins\nprint(left * 2)"
WRONG_PROGRAM = "eggs = 16\nbreakfast = 3\nleft = eggs - breakfast\nprint(left * 2)"


def make_result(
    program: str, answer: str, *, question: str = QUESTION, draft: str = DRAFT, gold: str | None = "18"
) -> RefinementResult:
    lines = program.splitlines()
    execution = ExecResult(
        "ok",
        stdout=answer + "\n",
        answer=answer,
        trace=[TraceStep(i + 1, line, {}) for i, line in enumerate(lines)],
        duration_ms=3.0,
    )
    candidate = Candidate(
        text=f"```python\n{program}\n```", program=program, execution=execution, answer=answer, tokens=30
    )
    return RefinementResult(
        question=question,
        draft=draft,
        draft_answer="26",
        strategy="greedy",
        candidates=[candidate],
        chosen=0,
        refined_answer=answer,
        votes={answer: 1},
        verdict="disagrees" if answer != "26" else "agrees",
        gold=gold,
        draft_correct=False if gold else None,
        refined_correct=(answer == gold) if gold else None,
        model="test",
    )


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "annotations.db")


@pytest.fixture
def refinements_file(tmp_path) -> Path:
    """Two refinements of the same (question, draft) - one right, one wrong - and one of another item."""
    return write_jsonl(
        tmp_path / "refined.jsonl",
        [
            make_result(RIGHT_PROGRAM, "18").to_dict(),
            make_result(WRONG_PROGRAM, "26").to_dict(),
            make_result(
                "print(3 * 4)", "12", question="What is 3 times 4?", draft="3 * 4 = 12\nA: 12", gold="12"
            ).to_dict(),
        ],
    )


PASSWORD = "correct horse battery"
ACCOUNTS = {"ann": "annotator", "bob": "annotator", "boss": "admin"}


@pytest.fixture(scope="session")
def password_hash() -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(PASSWORD)


def write_users(path: Path, password_hash: str, accounts: dict[str, str] = ACCOUNTS) -> Path:
    """A users file as `python -m cap_app users add` writes it (one hash for all: hashing is slow)."""
    users = {name: {"role": role, "hash": password_hash} for name, role in accounts.items()}
    path.write_text(json.dumps({"version": 1, "users": users}), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def signed_in_accounts(tmp_path, monkeypatch, password_hash) -> Path:
    """Every annotator test runs with accounts (ann, bob: annotators; boss: admin), as a team's server
    does; a test of local or closed use removes CAP_USERS itself."""
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("OAUTH_CLIENT_ID", raising=False)
    path = write_users(tmp_path / "users.json", password_hash)
    monkeypatch.setenv("CAP_USERS", str(path))
    return path


def as_user(name: str | None, origin: str = "page"):
    """The request Gradio hands a handler for a session signed in as `name` (None: not signed in);
    a browser's requests carry Sec-Fetch-Mode, an API client's do not."""
    import gradio as gr

    headers = {"sec-fetch-mode": "cors"} if origin == "page" else {"user-agent": "python-httpx"}
    return gr.Request(username=name, headers=headers)
