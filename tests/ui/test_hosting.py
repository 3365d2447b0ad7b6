"""ZeroGPU wrapping (only with the `spaces` package and SPACES_ZERO_GPU) and the model allowlist."""

from __future__ import annotations

import sys

from cap_app.ui import hosting

# stands in for Hugging Face's `spaces` package, which only works on a ZeroGPU Space
FAKE_SPACES = """
def GPU(duration=60):
    def wrap(fn):
        fn.zero_gpu_duration = duration
        return fn
    return wrap
"""


def generate():
    return "program"


def test_on_gpu_is_the_identity_off_zero_gpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert hosting.on_gpu(generate) is generate
    assert not hosting.zero_gpu_enabled()


def test_on_gpu_uses_spaces_gpu_on_a_zero_gpu_space(monkeypatch, tmp_path):
    (tmp_path / "spaces.py").write_text(FAKE_SPACES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert hosting.on_gpu(generate) is generate  # the package alone is not enough
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")

    def generate_on_gpu():
        return "program"

    wrapped = hosting.on_gpu(generate_on_gpu)
    assert wrapped() == "program" and wrapped.zero_gpu_duration == hosting.GPU_SECONDS


def test_model_choices_come_from_the_operator_not_the_visitor(monkeypatch):
    monkeypatch.delenv("CAP_MODEL", raising=False)
    monkeypatch.delenv("CAP_MODEL_CHOICES", raising=False)
    assert hosting.model_choices() == [hosting.DEFAULT_MODEL_CHOICE]
    monkeypatch.setenv("CAP_MODEL", "Qwen/Qwen2.5-Math-1.5B-Instruct")
    monkeypatch.setenv("CAP_MODEL_CHOICES", "default, Qwen/Qwen2.5-Math-1.5B-Instruct,")
    assert hosting.model_choices() == ["Qwen/Qwen2.5-Math-1.5B-Instruct", "default"]


def test_backend_choices_offer_a_server_only_when_the_operator_names_one(monkeypatch):
    monkeypatch.delenv("CAP_BASE_URL", raising=False)
    assert hosting.backend_choices() == ["auto", "transformers", "llama.cpp"]
    monkeypatch.setenv("CAP_BASE_URL", "http://127.0.0.1:8000/v1")
    assert hosting.backend_choices() == ["auto", "transformers", "llama.cpp", "openai"]


def test_zero_gpu_wraps_only_the_engine_generation_functions(monkeypatch, tmp_path):
    from cap_app.backends import transformers

    (tmp_path / "spaces.py").write_text(FAKE_SPACES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    for name in ("generate_stream", "generate_batch"):
        monkeypatch.setattr(transformers, name, getattr(transformers, name))  # restored after the test
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert hosting.wrap_generation_for_zero_gpu() is False
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert hosting.wrap_generation_for_zero_gpu() is True
    assert hosting.wrap_generation_for_zero_gpu() is True  # idempotent
    assert (
        transformers.generate_stream.zero_gpu_duration
        == transformers.generate_batch.zero_gpu_duration
        == hosting.GPU_SECONDS
    )
