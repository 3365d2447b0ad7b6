"""`python -m cap_app data build`: CaP training data (SFT + preference rows) from GSM8K train.

    python -m cap_app data build --output-dir runs/data
    python -m cap_app data build --limit 200 --corrupted-drafts 3 --output-dir /tmp/cap-data
    python -m cap_app data build --limit 200 --sample-model default --sampled-programs 4
"""

from __future__ import annotations

import json
import sys

from cap_app.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.data.build import DataBuildConfig

HELP = "build CaP training data (SFT and preference rows) from GSM8K train"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help=HELP, description=HELP)
    add_dataclass_arguments(build, DataBuildConfig)


def main(args) -> int:
    from cap_app.data.build import build
    from cap_app.model import ModelLoadError, quiet_library_output

    cfg = dataclass_from_args(DataBuildConfig, args)
    if cfg.sample_model:
        quiet_library_output()
    try:
        report = build(cfg)
    except (OSError, ValueError, KeyError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in report.items() if k != "config"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {cfg.output_dir}/sft.jsonl, dpo.jsonl and report.json")
    return 0
