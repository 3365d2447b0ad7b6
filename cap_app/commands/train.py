"""`python -m cap_app train sft|dpo`: train a CaP LoRA adapter with trl (SFT, then DPO).

    python -m cap_app train sft --data runs/data/sft.jsonl --output_dir runs/sft --max_steps 100
    python -m cap_app train sft --output_dir runs/sft --max_steps 100 --resume
    python -m cap_app train dpo --adapter runs/sft/final --loss_type sigmoid+sft --loss_weights 1 0.5
    python -m cap_app train sft --config my_run.yaml          # any option, from a YAML file
    python -m cap_app train dpo --help                         # every option with its default
    python -m cap_app train ship runs/sft/checkpoint-200       # a checkpoint becomes the offline default's adapter

Options are the fields of CapSFTConfig / CapDPOConfig (cap_app/train/config.py): trl's and
transformers' training arguments plus ours. They are parsed by trl's own parser inside `main`,
so `--help` of the command itself stays instant.
"""

from __future__ import annotations

import argparse
import json

from cap_app.commands.common import fail

HELP = "train a CaP adapter with trl + LoRA: sft (stage 1), then dpo (stage 2)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "stage",
        choices=("sft", "dpo", "ship"),
        help="sft: question+draft -> program; dpo: preferences; ship: copy a checkpoint's adapter "
        "(float16) to --to (default: the offline default's adapter folder)",
    )
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="training options as `--name value` (see `train sft --help`), or --config FILE.yaml",
    )


def main(args) -> int:
    if args.stage == "ship":
        return _ship(args.options)
    from trl import TrlParser

    from cap_app.models.loading import ModelLoadError
    from cap_app.train.common import TrainingError
    from cap_app.train.config import CapDPOConfig, CapSFTConfig

    config_class = CapSFTConfig if args.stage == "sft" else CapDPOConfig
    parser = TrlParser(config_class, prog=f"python -m cap_app train {args.stage}")
    try:
        (cfg,) = parser.parse_args_and_config(args.options)
    except (OSError, ValueError) as error:
        return fail(error, 2)
    if args.stage == "sft":
        from cap_app.train.sft import train_sft as train
    else:
        from cap_app.train.dpo import train_dpo as train
    try:
        summary = train(cfg)
    except (TrainingError, ModelLoadError) as error:
        return fail(error, 2)
    print(json.dumps(summary, indent=2))
    if summary["finished"]:
        print(f"adapter: {cfg.output_dir}/final   loss curve: {cfg.output_dir}/loss.html")
    else:
        print(
            f"stopped at step {summary['steps']} of {summary['max_steps']}; continue with the same "
            f"command plus --resume (checkpoints in {cfg.output_dir})"
        )
    return 0


def _ship(options: list[str]) -> int:
    from cap_app.models.loading import DEFAULT_ADAPTER_DIR
    from cap_app.train.common import TrainingError, ship_adapter

    parser = argparse.ArgumentParser(prog="python -m cap_app train ship")
    parser.add_argument("checkpoint", help="a checkpoint-N or final/ folder of `train sft` or `train dpo`")
    parser.add_argument("--to", default=str(DEFAULT_ADAPTER_DIR), help="adapter folder to write (default: %(default)s)")
    parser.add_argument(
        "--base",
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        help="base model recorded in adapter_config.json (default: %(default)s)",
    )
    args = parser.parse_args(options)
    try:
        written = ship_adapter(args.checkpoint, args.to, base=args.base)
    except TrainingError as error:
        return fail(error, 2)
    print(f"adapter: {written}")
    return 0
