"""SFT and DPO on a tiny random Llama on CPU: the loss goes down, runs resume, the adapter loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cap_app.cli import main as cli_main
from cap_app.engine.prompts import build_messages, format_completion

pytestmark = pytest.mark.slow

QUESTION = "Tom has 3 boxes of 4 apples. He eats 2. How many apples are left?"
DRAFT = "Tom has 3 + 4 = 7 apples. 7 - 2 = 5.\nA: 5"
RIGHT = "boxes = 3\napples_per_box = 4\neaten = 2\nleft = boxes * apples_per_box - eaten\nprint(left)"
WRONG = "boxes = 3\napples_per_box = 4\neaten = 2\nleft = boxes + apples_per_box - eaten\nprint(left)"
# The tiny model's tokenizer is one token per byte, so the CaP prompt is ~900 tokens long.
TINY = ["--max_length", "2048", "--warmup_steps", "0", "--disable_tqdm", "true", "--seed", "0"]


def meta() -> dict:
    return {
        "id": "t-0",
        "question": QUESTION,
        "draft": DRAFT,
        "draft_kind": "wrong_operation",
        "draft_answer": "5",
        "gold": "10",
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rows")
    prompt = build_messages(QUESTION, DRAFT)
    sft = {"prompt": prompt, "completion": [{"role": "assistant", "content": format_completion(RIGHT)}], "meta": meta()}
    dpo = {
        "prompt": prompt,
        "chosen": sft["completion"],
        "rejected": [{"role": "assistant", "content": format_completion(WRONG)}],
        "meta": meta(),
    }
    (folder / "sft.jsonl").write_text((json.dumps(sft) + "\n") * 2)
    (folder / "dpo.jsonl").write_text((json.dumps(dpo) + "\n") * 2)
    return folder


def train_argv(stage: str, model: str, data: Path, output_dir: Path, steps: int, *options: str) -> list[str]:
    """The `train` command line of every run here: the stage's rows, two a step, the tiny-model settings."""
    return [
        "train",
        stage,
        "--model",
        model,
        "--data",
        str(data / f"{stage}.jsonl"),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(steps),
        "--per_device_train_batch_size",
        "2",
        *options,
        *TINY,
    ]


def losses(output_dir: Path, key: str = "loss") -> list[float]:
    state = json.loads(
        max(output_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime).read_text()
    )
    return [entry[key] for entry in state["log_history"] if key in entry]


@pytest.fixture(scope="module")
def sft_dir(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft")
    options = ["--learning_rate", "3e-2", "--save_steps", "3"]
    assert cli_main(train_argv("sft", tiny_model_dir, data, out, 6, *options)) == 0
    return out


def test_sft_loss_goes_down_and_writes_adapter_and_curve(sft_dir):
    curve = losses(sft_dir)
    assert len(curve) == 6
    assert sum(curve[-2:]) < sum(curve[:2]) - 0.1
    assert (sft_dir / "final" / "adapter_model.safetensors").is_file()
    assert "plotly" in (sft_dir / "loss.html").read_text()
    summary = json.loads((sft_dir / "final" / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["finished"] and summary["rows"] == 2


def test_trained_adapter_loads_in_the_engine(sft_dir, tiny_model_dir):
    import torch

    from cap_app.models.loading import ModelConfig, load_model

    base = load_model(ModelConfig(model=tiny_model_dir, adapter="none"))
    tuned = load_model(ModelConfig(model=tiny_model_dir, adapter=str(sft_dir / "final")))
    assert tuned.adapter == str(sft_dir / "final")
    ids = base.tokenizer("print(1)", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(base.model(ids).logits, tuned.model(ids).logits)


def test_ship_turns_a_checkpoint_into_a_float16_adapter_folder(sft_dir, tiny_model_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from cap_app.models.loading import ModelConfig, load_model

    target = tmp_path / "shipped"
    target.mkdir()
    (target / "README.md").write_text("model card")
    assert cli_main(["train", "ship", str(sft_dir / "checkpoint-6"), "--to", str(target), "--base", "tiny"]) == 0
    assert (target / "README.md").read_text() == "model card"  # the card is kept
    assert json.loads((target / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    shipped, trained = (
        load_file(target / "adapter_model.safetensors"),
        load_file(sft_dir / "checkpoint-6" / "adapter_model.safetensors"),
    )
    assert shipped.keys() == trained.keys() and {t.dtype for t in shipped.values()} == {torch.float16}
    assert load_model(ModelConfig(model=tiny_model_dir, adapter=str(target))).adapter == str(target)
    assert cli_main(["train", "ship", str(tmp_path / "nothing"), "--to", str(target)]) == 2
    assert "holds no adapter" in capsys.readouterr().err


def test_dpo_from_the_sft_adapter_prefers_the_right_program(sft_dir, tiny_model_dir, data, tmp_path):
    options = ["--adapter", str(sft_dir / "final"), "--learning_rate", "3e-2", "--save_steps", "4"]
    options += ["--loss_type", "sigmoid+sft", "--loss_weights", "1", "0.5"]
    assert cli_main(train_argv("dpo", tiny_model_dir, data, tmp_path, 4, *options)) == 0
    curve = losses(tmp_path)
    assert curve[-1] < curve[0]
    assert losses(tmp_path, "rewards/margins")[-1] > 0
    from safetensors import safe_open

    with safe_open(tmp_path / "final" / "adapter_model.safetensors", "pt") as weights:
        assert weights.keys() and not any(".ref." in key for key in weights.keys())


def test_a_stopped_run_resumes_from_its_checkpoint(tiny_model_dir, data, tmp_path, capsys):
    args = train_argv("sft", tiny_model_dir, data, tmp_path, 3, "--save_steps", "10", "--lora_layers", "1-1")
    assert cli_main([*args, "--stop_after_minutes", "0.0001"]) == 0
    assert "stopped at step 1 of 3" in capsys.readouterr().out
    assert (tmp_path / "checkpoint-1").is_dir() and not (tmp_path / "final").exists()
    assert cli_main([*args, "--resume"]) == 0
    summary = json.loads((tmp_path / "final" / "training_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 3
    from safetensors import safe_open

    with safe_open(tmp_path / "final" / "adapter_model.safetensors", "pt") as weights:
        layers = {key.split(".layers.")[1].split(".")[0] for key in weights.keys()}
    assert layers == {"1"}  # --lora_layers 1-1: the other layer stays frozen and unadapted


def test_sft_continues_from_a_given_adapter_in_its_own_shape(sft_dir, tiny_model_dir, data, tmp_path, capsys):
    from safetensors.torch import load_file

    start = load_file(sft_dir / "final" / "adapter_model.safetensors")
    options = ["--learning_rate", "1e-2", "--lora_layers", "1-1"]  # lora_layers ignored: the adapter's shape is kept
    args = train_argv("sft", tiny_model_dir, data, tmp_path, 2, *options)
    assert cli_main([*args, "--init_adapter", str(sft_dir / "final")]) == 0
    continued = load_file(tmp_path / "final" / "adapter_model.safetensors")
    assert continued.keys() == start.keys()  # both layers, as the adapter it started from
    assert any(not (continued[key].float() - start[key].float()).abs().max() < 1e-6 for key in start)
    first_from_trained = losses(tmp_path)[0]
    assert first_from_trained < losses(sft_dir)[0]  # it starts where the first run got to, not from scratch
    assert cli_main([*args, "--output_dir", str(tmp_path / "x"), "--init_adapter", str(tmp_path / "nothing")]) == 2
    assert "initial adapter" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["train", "dpo", "--data", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path)]) == 2
    assert "no data file" in capsys.readouterr().err


def test_both_stages_get_the_shared_defaults_over_trls():
    """Set once on the shared base (cap_app/train/config.py): the base must come before trl's class."""
    from cap_app.train.config import CapDPOConfig, CapSFTConfig

    for config in (CapSFTConfig(output_dir="unused"), CapDPOConfig(output_dir="unused")):
        assert (
            config.num_train_epochs,
            config.lr_scheduler_type,
            config.max_length,
            config.activation_checkpointing,
            config.logging_steps,
            config.save_steps,
            config.save_total_limit,
        ) == (1.0, "constant_with_warmup", 768, False, 1, 10, 2)


def test_dpo_scores_only_completions_on_cpu_with_the_same_log_probs(tiny_model_dir):
    """The CPU shortcut (cap_app.train.dpo.score_completions_only) projects the LM head on the
    labelled positions only; the per-token log-probs there must equal trl's all-positions path."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM

    from cap_app.train.dpo import score_completions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs",))
    ids = torch.randint(4, model.config.vocab_size, (2, 24))
    labels = ids.masked_fill(torch.arange(24) < 16, -100)  # a 16-token "prompt", then the completion

    def log_probs():
        return model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs

    use_triton = trl_utils._use_triton
    try:
        everywhere = log_probs()
        score_completions_only()
        assert trl_utils._use_triton(torch.device("cpu"))
        only_completions = log_probs()
    finally:
        trl_utils._use_triton = use_triton
    torch.testing.assert_close(only_completions, everywhere)
    assert (only_completions[:, :15] == 0).all() and (only_completions[:, 15:] < 0).all()
