"""Loading models: full precision, 4-bit on CPU, adapters, the process-wide cache, clear errors."""

import json
import shutil
import threading

import pytest
import torch

import cap_app.models.loading
from cap_app.backends.base import GenerationConfig
from cap_app.backends.transformers import generate_batch
from cap_app.models.loading import ModelConfig, ModelLoadError, get_model, load_model
from tests.helpers.tiny_model import make_tiny_model


def test_loads_a_local_folder_in_full_precision_on_cpu(tiny_model_dir):
    loaded = load_model(ModelConfig(model=tiny_model_dir))
    assert (loaded.name, loaded.device, loaded.quantization, loaded.adapter) == (tiny_model_dir, "cpu", "none", None)
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None


def test_loads_in_4bit_nf4_on_cpu_with_bitsandbytes(tiny_model_dir, tiny_loaded):
    import bitsandbytes as bnb

    loaded = load_model(ModelConfig(model=tiny_model_dir, quantization="4bit"))
    projection = loaded.model.model.layers[0].self_attn.q_proj
    assert isinstance(projection, bnb.nn.Linear4bit)
    assert projection.weight.quant_type == "nf4" and projection.weight.quant_state.nested  # double quant
    config = GenerationConfig(max_new_tokens=6)
    [[quantized]] = generate_batch(loaded, ["2 + 3 ="], config)
    [[full]] = generate_batch(tiny_loaded, ["2 + 3 ="], config)
    assert quantized.new_tokens == 6
    # NF4 weights are an approximation of the same model: close, not identical, log-probs.
    assert quantized.mean_logprob == pytest.approx(full.mean_logprob, abs=0.5)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^model '.*nope' not found: no such file or folder$"):
        load_model(ModelConfig(model=str(tmp_path / "nope")))


def test_unknown_hub_id_is_a_clear_error_offline():
    with pytest.raises(ModelLoadError, match=r"^model 'no-such-org/no-such-model' not found"):
        load_model(ModelConfig(model="no-such-org/no-such-model"))


def test_tokenizer_without_chat_template_is_refused_unless_allowed(tmp_path):
    folder = make_tiny_model(tmp_path / "plain", chat_template=False)
    with pytest.raises(ModelLoadError, match="has no chat template.*--allow-plain-prompt"):
        load_model(ModelConfig(model=folder))
    loaded = load_model(ModelConfig(model=folder, allow_plain_prompt=True))
    assert not loaded.tokenizer.chat_template


def test_model_larger_than_memory_is_refused_before_loading_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "huge"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):  # sized from the config then, not the weights' headers
        weights.unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(
        hidden_size=16384,
        intermediate_size=53248,
        num_hidden_layers=126,
        num_attention_heads=128,
        num_key_value_heads=8,
    )  # ~400B parameters
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"does not fit: it needs about \d+\.\d GiB on cpu.*--quantization 4bit"):
        load_model(ModelConfig(model=str(folder)))


def test_parameter_count_from_weight_headers_matches_the_loaded_model(tiny_model_dir):
    from transformers import AutoConfig

    from cap_app.models.loading import _parameter_count

    loaded = load_model(ModelConfig(model=str(tiny_model_dir)))
    params = {p.data_ptr(): p.numel() for p in loaded.model.parameters()}  # tied weights once
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert _parameter_count(config, str(tiny_model_dir)) == sum(params.values())


def test_dtype_option_sets_the_weights_precision(tiny_model_dir):
    assert load_model(ModelConfig(model=str(tiny_model_dir))).model.dtype == torch.float32  # CPU default
    loaded = load_model(ModelConfig(model=str(tiny_model_dir), dtype="bfloat16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelLoadError, match="unknown dtype 'int3'"):
        load_model(ModelConfig(model=str(tiny_model_dir), dtype="int3"))


def test_cuda_asked_without_a_gpu_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model(ModelConfig(model=tiny_model_dir, device="cuda"))


@pytest.fixture(scope="module")
def lora_adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero weights, saved like the training pipeline saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    return str(folder)


def _logits(loaded, text="x = 3"):
    inputs = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**inputs).logits


def test_adapter_changes_the_model_and_matches_peft(tiny_model_dir, lora_adapter_dir, tiny_loaded):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapted = load_model(ModelConfig(model=tiny_model_dir, adapter=lora_adapter_dir))
    assert adapted.adapter == lora_adapter_dir
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_adapter_dir)
    inputs = adapted.tokenizer("x = 3", return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
    assert not torch.allclose(_logits(adapted), _logits(tiny_loaded), atol=1e-4)
    assert torch.allclose(_logits(adapted), expected, atol=1e-4)


def test_the_projects_adapter_is_merged_once_and_later_loads_skip_peft(
    tiny_model_dir, lora_adapter_dir, tmp_path, monkeypatch
):
    bundled = tmp_path / "bundled-adapter"
    shutil.copytree(lora_adapter_dir, bundled)
    monkeypatch.setattr(cap_app.models.loading, "DEFAULT_ADAPTER_DIR", bundled)
    monkeypatch.setenv("CAP_CACHE_DIR", str(tmp_path / "cache"))
    merged_dir = tmp_path / "cache" / "merged"
    first = load_model(ModelConfig(model=tiny_model_dir, adapter=str(bundled)))
    assert len(list(merged_dir.iterdir())) == 1

    def no_peft(*args, **kwargs):
        raise AssertionError("the adapter was applied again instead of read from the merged cache")

    with monkeypatch.context() as patched:
        patched.setattr(cap_app.models.loading, "_apply_adapter", no_peft)
        second = load_model(ModelConfig(model=tiny_model_dir, adapter=str(bundled)))
    assert second.adapter == str(bundled)
    assert torch.allclose(_logits(first), _logits(second), atol=1e-6)

    old_entry = next(merged_dir.iterdir())
    with open(bundled / "adapter_config.json", "a") as handle:
        handle.write("\n")  # a new version of the adapter: merged again, the old entry removed
    third = load_model(ModelConfig(model=tiny_model_dir, adapter=str(bundled)))
    assert torch.allclose(_logits(first), _logits(third), atol=1e-6)
    entries = list(merged_dir.iterdir())
    assert len(entries) == 1 and entries[0] != old_entry


def test_other_adapters_are_merged_in_memory_without_filling_the_cache(
    tiny_model_dir, lora_adapter_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("CAP_CACHE_DIR", str(tmp_path / "cache"))
    load_model(ModelConfig(model=tiny_model_dir, adapter=lora_adapter_dir))
    assert not (tmp_path / "cache" / "merged").exists()


def test_adapter_from_environment_and_none_disables_it(tiny_model_dir, lora_adapter_dir, monkeypatch):
    monkeypatch.setenv("CAP_ADAPTER", lora_adapter_dir)
    assert load_model(ModelConfig(model=tiny_model_dir)).adapter == lora_adapter_dir
    assert load_model(ModelConfig(model=tiny_model_dir, adapter="none")).adapter is None


def test_bad_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"^adapter '.*' could not be loaded"):
        load_model(ModelConfig(model=tiny_model_dir, adapter=str(tmp_path)))


def test_model_from_environment(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CAP_MODEL", tiny_model_dir)
    assert load_model(ModelConfig()).name == tiny_model_dir


def test_project_adapter_applies_to_the_offline_default_only(tmp_path, monkeypatch):
    (tmp_path / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(cap_app.models.loading, "DEFAULT_ADAPTER_DIR", tmp_path)
    assert cap_app.models.loading.resolve_source(ModelConfig()).adapter == str(tmp_path)
    assert cap_app.models.loading.resolve_source(ModelConfig(adapter="none")).adapter is None
    assert cap_app.models.loading.resolve_source(ModelConfig(model="some/model")).adapter is None


def test_a_missing_default_adapter_is_a_clear_error_not_the_base_model(tmp_path, monkeypatch):
    monkeypatch.setattr(cap_app.models.loading, "DEFAULT_ADAPTER_DIR", tmp_path / "smollm2-cap")
    with pytest.raises(ModelLoadError, match=r"^the offline default's CaP adapter is missing: .*--adapter none"):
        cap_app.models.loading.resolve_source(ModelConfig())
    assert cap_app.models.loading.resolve_source(ModelConfig(adapter="none")).adapter is None
    assert cap_app.models.loading.resolve_source(ModelConfig(model="some/model")).adapter is None


def test_offline_default_is_the_bundled_gguf_else_the_same_model_on_the_hub(monkeypatch):
    bundled = cap_app.models.loading.resolve_source(ModelConfig()).path
    assert bundled.endswith(".gguf")
    monkeypatch.setattr(cap_app.models.loading.importlib.util, "find_spec", lambda name: None)
    source = cap_app.models.loading.resolve_source(ModelConfig())
    assert source.path == "HuggingFaceTB/SmolLM2-135M-Instruct" and source.name == "SmolLM2-135M-Instruct"


def test_get_model_loads_once_for_concurrent_callers(tiny_model_dir, fresh_model_cache, monkeypatch):
    loads = []
    real_load = cap_app.models.loading.load_model
    monkeypatch.setattr(cap_app.models.loading, "load_model", lambda cfg: loads.append(cfg) or real_load(cfg))
    config = ModelConfig(model=tiny_model_dir)
    results = []
    threads = [threading.Thread(target=lambda: results.append(get_model(config))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len({id(r) for r in results}) == 1
    assert get_model(ModelConfig(model=tiny_model_dir, quantization="none")) is not results[0]  # new settings
    assert len(loads) == 2
