"""Restarts keep their work: persistent storage (/data on a Space) holds the model cache and the Hub
cache, and where it is missing on a Space the Annotate tab says judgements are lost on restart."""

from __future__ import annotations

import os

import pytest

from cap_app import storage
from cap_app.models import loading
from cap_app.ui import hosting


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A stand-in for /data, used by every function that reads SPACES_DATA_DIR's default."""
    folder = tmp_path / "data"
    folder.mkdir()
    for fn in (storage.persistent_dir, storage.use_persistent_storage, storage.is_persistent):
        monkeypatch.setattr(fn, "__defaults__", (str(folder),))
    return folder


def test_the_model_cache_moves_to_persistent_storage_when_it_is_mounted(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CAP_CACHE_DIR", raising=False)
    assert loading.cache_dir() == data_dir / "cap-refinery-cache"
    monkeypatch.setenv("CAP_CACHE_DIR", str(tmp_path / "mine"))
    assert loading.cache_dir() == tmp_path / "mine"  # the operator's choice wins
    monkeypatch.delenv("CAP_CACHE_DIR")
    data_dir.rmdir()
    assert loading.cache_dir() == loading.Path.home() / ".cache" / "cap-refinery"


def test_the_hub_cache_goes_to_persistent_storage_unless_the_operator_chose_one(data_dir, monkeypatch):
    monkeypatch.delenv("HF_HOME", raising=False)
    assert storage.use_persistent_storage() == data_dir
    assert os.environ["HF_HOME"] == str(data_dir / ".huggingface")
    monkeypatch.setenv("HF_HOME", "/elsewhere")
    storage.use_persistent_storage()
    assert os.environ["HF_HOME"] == "/elsewhere"


def test_the_annotate_tab_warns_only_where_a_restart_loses_judgements(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CAP_DB_PATH", raising=False)
    monkeypatch.setattr(storage.os.path, "exists", lambda path: False)  # not in a container
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert hosting.storage_notice("annotations.db") == ""  # a local run keeps ./annotations.db

    monkeypatch.setenv("SPACE_ID", "someone/cap-refinery")
    notice = hosting.storage_notice(tmp_path / "annotations.db")
    assert "lost when this app restarts" in notice and "persistent storage" in notice and "CAP_DB_PATH" in notice
    assert hosting.storage_notice(data_dir / "annotations.db") == ""  # on /data they stay
    monkeypatch.setenv("CAP_DB_PATH", str(tmp_path / "kept.db"))
    assert hosting.storage_notice(tmp_path / "kept.db") == ""  # the operator put them somewhere


def test_the_served_annotate_tab_shows_the_warning_on_a_space_without_storage(monkeypatch, tmp_path):
    from cap_app.annotate.store import Store
    from cap_app.ui.app import build_demo

    monkeypatch.setenv("SPACE_ID", "someone/cap-refinery")
    monkeypatch.delenv("CAP_DB_PATH", raising=False)
    monkeypatch.setattr(storage, "persistent_dir", lambda data_dir=None: None)
    monkeypatch.chdir(tmp_path)
    assert Store().path.name == "annotations.db"
    demo = build_demo()
    shown = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "cap-ann-storage"]
    assert len(shown) == 1 and "lost when this app restarts" in shown[0].value
