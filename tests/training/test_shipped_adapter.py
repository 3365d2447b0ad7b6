"""The shipped offline adapter fits SmolLM2-135M's architecture and is small enough to commit.

(The real GGUF base with this adapter is exercised end to end by tests/engine/test_bundled_model.py.)
"""

from __future__ import annotations

import json

import pytest

from cap_app.models.loading import DEFAULT_ADAPTER_DIR

# SmolLM2-135M-Instruct's shape (its config.json), so the check needs no download or GGUF conversion.
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
)


def test_adapter_is_a_small_float16_lora():
    from safetensors import safe_open

    config = json.loads((DEFAULT_ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    weights = DEFAULT_ADAPTER_DIR / "adapter_model.safetensors"
    assert weights.stat().st_size < 10 * 2**20
    with safe_open(weights, "pt") as tensors:
        assert {str(tensors.get_tensor(key).dtype) for key in tensors.keys()} == {"torch.float16"}


@pytest.mark.slow
def test_adapter_loads_onto_the_smollm2_architecture():
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = PeftModel.from_pretrained(LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)), str(DEFAULT_ADAPTER_DIR))
    shipped = load_file(DEFAULT_ADAPTER_DIR / "adapter_model.safetensors")
    loaded = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(shipped)
    for key, tensor in shipped.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(loaded[name].detach().to(torch.float16), tensor), key
