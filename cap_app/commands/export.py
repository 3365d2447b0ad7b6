"""`python -m cap_app export`: annotators' judgements as training data, with an agreement summary.

python -m cap_app export --format dpo --output prefs.jsonl        # TRL {prompt, chosen, rejected}
python -m cap_app export --format kto --output kto.jsonl          # {prompt, completion, label}
python -m cap_app export --format csv --output judgements.csv --db /data/annotations.db
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cap_app.annotate.export import ExportConfig
from cap_app.commands.common import fail
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args

HELP = "export judgements as DPO/KTO training data or CSV, and print annotator agreement"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ExportConfig)


def main(args: argparse.Namespace) -> int:
    from cap_app.annotate.export import export
    from cap_app.annotate.store import Store, StoreError, default_db_path

    cfg = dataclass_from_args(ExportConfig, args)
    if not cfg.output:
        return fail("--output is required", 2)
    db = Path(cfg.db) if cfg.db else default_db_path()
    if not db.is_file():
        return fail(f"no annotation database at {db}", 2)
    tokenizer = None
    if cfg.tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer, local_files_only=True)
        except (OSError, ValueError) as exc:
            return fail(f"cannot load a tokenizer from {cfg.tokenizer}: {str(exc).splitlines()[0]}", 2)
    try:
        summary = export(Store(db), cfg.format, cfg.output, tokenizer=tokenizer)
    except (StoreError, OSError) as exc:
        return fail(exc, 1)
    print(summary.text())
    return 0
