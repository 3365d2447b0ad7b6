"""The model is prepared when the app starts, and a visitor who refines meanwhile joins that load
and sees its step and time (not a bare "Loading the model…"). The loader is a stand-in that
reports a step and waits for the test, so every state is reached on purpose, not by timing."""

from __future__ import annotations

import re
import threading

import pytest

import cap_app.backends
from cap_app.backends import preparation
from cap_app.models import progress
from cap_app.models.loading import ModelLoadError
from cap_app.ui import app as ui_app
from cap_app.ui import hosting, refine_handlers, settings
from tests.ui.conftest import JANET_DRAFT, JANET_QUESTION

SETTINGS = dict(strategy="greedy", n=1, temperature=0.0, max_new_tokens=24, time_limit_s=5)


class SlowLoader:
    """Stands in for get_backend: reports a conversion step, then waits until released; counts calls."""

    def __init__(self):
        self.calls, self.converting, self.release = 0, threading.Event(), threading.Event()

    def __call__(self, model_cfg, backend_cfg=None):
        self.calls += 1
        progress.report("converting the bundled GGUF model")
        self.converting.set()
        assert self.release.wait(30)
        raise ModelLoadError("stand-in model: nothing to load")


@pytest.fixture
def loader(monkeypatch):
    slow = SlowLoader()
    monkeypatch.setattr(cap_app.backends, "get_backend", slow)
    monkeypatch.setattr(refine_handlers, "PREPARATION_TICK_S", 0.01)
    monkeypatch.setenv("CAP_PREPARE", "1")
    monkeypatch.delenv("CAP_MODEL", raising=False)
    yield slow
    slow.release.set()
    for loading in list(preparation._loads.values()):  # none left running into the next test
        loading.done.wait(30)


def test_a_visitor_during_the_preparation_joins_it_and_sees_its_step_and_time(loader):
    started = ui_app.prepare_default_model()  # what launch() does before serving
    assert loader.converting.wait(30)
    frames = refine_handlers.refine_page(JANET_QUESTION, JANET_DRAFT, "", hosting.DEFAULT_MODEL_CHOICE, **SETTINGS)
    statuses = []
    for frame in frames:
        status = dict(zip(refine_handlers.OUTPUTS, frame, strict=True))["status"]
        statuses.append(status)
        if len(statuses) == 3:
            loader.release.set()
    shown = [s for s in statuses if re.search(r"Preparing the model: converting the bundled GGUF model… \d+ s", s)]
    assert shown, statuses
    assert loader.calls == 1, "the visitor's refinement waited for the app's preparation, it did not load again"
    assert started.done.is_set()
    last = dict(zip(refine_handlers.OUTPUTS, frame, strict=True))
    assert "The model could not be loaded: stand-in model" in last["verdict"]


def test_stop_while_waiting_for_the_model_stops_the_wait(loader):
    request = type("Request", (), {"session_hash": "waiting-visitor"})()
    frames = refine_handlers.refine_page(
        JANET_QUESTION, JANET_DRAFT, "", hosting.DEFAULT_MODEL_CHOICE, **SETTINGS, request=request
    )
    next(frames)
    assert loader.converting.wait(30)
    assert refine_handlers.stop_refinement(request) == "Stopping…"
    rest = [dict(zip(refine_handlers.OUTPUTS, frame, strict=True))["status"] for frame in frames]
    assert rest[-1] == "Stopped."


def test_preparation_can_be_turned_off(loader, monkeypatch):
    monkeypatch.setenv("CAP_PREPARE", "0")
    assert ui_app.prepare_default_model() is None and loader.calls == 0


def test_a_finished_preparation_is_not_reused_for_a_later_load(loader):
    loader.release.set()
    first = preparation.load(settings.model_config("default"), settings.backend_config("auto"))
    with pytest.raises(ModelLoadError):
        first.result(30)
    second = preparation.load(settings.model_config("default"), settings.backend_config("auto"))
    assert second is not first  # a failed or finished load is not the answer to the next request
    with pytest.raises(ModelLoadError):
        second.result(30)
    assert loader.calls == 2
