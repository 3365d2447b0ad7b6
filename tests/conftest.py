"""Shared fixtures. Every cache a test could fill points into a temporary folder, and the Hub is
offline: tests never touch the network and never write outside tmp dirs.

The environment is set at import time, before any test module imports huggingface_hub or
cap_app, because those read their cache locations when first imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="cap-refinery-tests-"))
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)

os.environ["HF_HOME"] = str(_SESSION_DIR / "hf-home")
os.environ["CAP_CACHE_DIR"] = str(_SESSION_DIR / "cap-cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# The Annotate tab opens its database when the app is built; keep it (and any served app's) in tmp.
os.environ["CAP_DB_PATH"] = str(_SESSION_DIR / "annotations.db")
# A served test app does not prepare the default model in the background unless its test asks:
# two cores are shared, and a test that wants the model loads it when it refines.
os.environ["CAP_PREPARE"] = "0"
# A developer's own model choice must not leak into the tests.
for _name in ("CAP_MODEL", "CAP_ADAPTER"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama + byte-level tokenizer with a chat template, saved once per session."""
    from tests.helpers.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def cap_cache_dir() -> Path:
    """The session's CAP_CACHE_DIR (the converted default model is cached here once per session)."""
    return Path(os.environ["CAP_CACHE_DIR"])
