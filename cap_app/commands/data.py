"""`python -m cap_app data build|faithful|variants`: CaP training data, and the dev sets that test it.

    python -m cap_app data build --output-dir runs/data
    python -m cap_app data build --limit 200 --sample-model default --sampled-programs 4
    python -m cap_app data faithful --output-dir runs/data-faithful --prompts-per-question 2
    python -m cap_app data variants --kind slip --output runs/dev_slips.jsonl
    python -m cap_app data variants --kind plain --output runs/dev_plain.jsonl
    python -m cap_app data onpolicy-prompts --limit 1000 --output runs/onpolicy/prompts.jsonl
    python -m cap_app data onpolicy-pairs --refined runs/onpolicy/refined.jsonl --output-dir runs/onpolicy

`build` is the paper's recipe (gold programs for right and corrupted drafts); `faithful` is the
one a small model can learn (programs that recompute the draft's own steps, data/faithful_build.py);
`variants` rewrites a drafts file (data/gsm8k/model_drafts_dev.jsonl by default) into slip or
plain drafts, seeded, in the same format, so `eval --draft-key ...` reads it unchanged.
`onpolicy-prompts` / `onpolicy-pairs` wrap `refine --strategy vote` into execution-verified
self-training data: the model's own wrong programs as DPO's rejected side (data/onpolicy.py).
"""

from __future__ import annotations

import dataclasses
import json

from cap_app.commands.common import fail
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.data.build import DataBuildConfig
from cap_app.data.faithful_build import FaithfulBuildConfig
from cap_app.data.onpolicy import OnPolicyPairsConfig, OnPolicyPromptsConfig

HELP = "build CaP training data from GSM8K train, or slip/plain variants of a drafts file"
DEV_DRAFTS = "data/gsm8k/model_drafts_dev.jsonl"


@dataclasses.dataclass
class VariantsConfig:
    kind: str = dataclasses.field(
        default="slip",
        metadata={
            "help": "slip: one computation of each right draft states a wrong result that the rest builds on; "
            "plain: every draft without its <<a*b=c>> calculator annotations",
            "choices": ("slip", "plain"),
        },
    )
    input: str = dataclasses.field(
        default=DEV_DRAFTS,
        metadata={"help": "drafts file: question, ground_truth and one {solution, is_correct} object per draft source"},
    )
    output: str = dataclasses.field(default="runs/dev_slips.jsonl", metadata={"help": "where to write the variants"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed of the slips (same seed, same file)"})
    min_steps: int = dataclasses.field(
        default=2, metadata={"help": "slip: only drafts with at least this many written-out computations"}
    )


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    for name, config, help_text in (
        ("build", DataBuildConfig, "the paper's recipe: gold programs for right and corrupted drafts"),
        ("faithful", FaithfulBuildConfig, "programs that recompute the draft's own steps (right, plain, slip)"),
        ("variants", VariantsConfig, "slip or plain variants of a drafts file, for evaluation"),
        ("onpolicy-prompts", OnPolicyPromptsConfig, "train prompts as a refine batch, to sample the model on"),
        ("onpolicy-pairs", OnPolicyPairsConfig, "the model's wrong programs (from refine) as DPO pairs"),
    ):
        add_dataclass_arguments(sub.add_parser(name, help=help_text, description=help_text), config)


def main(args) -> int:
    from cap_app.models.loading import ModelLoadError

    try:
        if args.data_command == "variants":
            return _variants(dataclass_from_args(VariantsConfig, args))
        if args.data_command == "onpolicy-prompts":
            from cap_app.data.onpolicy import write_prompts

            cfg = dataclass_from_args(OnPolicyPromptsConfig, args)
            print(f"wrote {write_prompts(cfg)} prompts to {cfg.output}")
            return 0
        cfg, report = _build(args)
    except (OSError, ValueError, KeyError, ModelLoadError) as error:
        return fail(error, 2)
    summary = {k: v for k, v in report.items() if k != "config"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {cfg.output_dir}/sft.jsonl, dpo.jsonl and report.json")
    return 0


def _build(args):
    """The actions that write a training-data folder: (their config, their report)."""
    if args.data_command == "onpolicy-pairs":
        from cap_app.data.onpolicy import build_pairs

        cfg = dataclass_from_args(OnPolicyPairsConfig, args)
        return cfg, build_pairs(cfg)
    if args.data_command == "faithful":
        from cap_app.data.faithful_build import build_faithful

        cfg = dataclass_from_args(FaithfulBuildConfig, args)
        return cfg, build_faithful(cfg)
    from cap_app.data.build import build
    from cap_app.models.loading import quiet_library_output

    cfg = dataclass_from_args(DataBuildConfig, args)
    if cfg.sample_model:
        quiet_library_output()
    return cfg, build(cfg)


def _variants(cfg: VariantsConfig) -> int:
    from pathlib import Path

    from cap_app.data.variants import write_variants

    counts = write_variants(Path(cfg.input), Path(cfg.output), kind=cfg.kind, seed=cfg.seed, min_steps=cfg.min_steps)
    print(json.dumps(counts, indent=2))
    print(f"wrote {cfg.output}")
    return 0
