"""Fixtures of the engine tests: the tiny model loaded once, and a clean model cache per test."""

import pytest

import cap_app.models.loading


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    """The tiny random Llama loaded in full precision (shared: loading is the slow part)."""
    return cap_app.models.loading.load_model(cap_app.models.loading.ModelConfig(model=tiny_model_dir))


@pytest.fixture
def fresh_model_cache(monkeypatch):
    """get_model's process-wide cache, emptied for this test and restored after it."""
    monkeypatch.setattr(cap_app.models.loading, "_cached", None)
