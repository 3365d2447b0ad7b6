"""`python -m cap_app gguf`: write a CaP model as one GGUF file for llama.cpp, Ollama or LM Studio.

    python -m cap_app gguf --output runs/smollm2-cap.q8_0.gguf            # offline default + its CaP adapter
    python -m cap_app gguf --output runs/cap.f16.gguf --type f16 --adapter runs/sft-faithful/final
    python -m cap_app refine --backend llama.cpp --model runs/smollm2-cap.q8_0.gguf --adapter none --question ...

The base must be a .gguf file of the llama architecture (its tokenizer and chat template are
copied from it); see cap_app/models/gguf.py. Exit status: 0 on success, 1 when it cannot be written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cap_app.commands.common import fail
from cap_app.commands.config_args import add_dataclass_arguments, dataclass_from_args
from cap_app.models.gguf import GGUFExportConfig

HELP = "Merge a CaP adapter into its GGUF base model and write a GGUF (f16, q8_0 or q4_0) for llama.cpp."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, GGUFExportConfig)


def main(args: argparse.Namespace) -> int:
    from cap_app.models.gguf import ExportError, export_gguf
    from cap_app.models.loading import ModelConfig, ModelLoadError, quiet_library_output, resolve_source

    cfg = dataclass_from_args(GGUFExportConfig, args)
    if not cfg.output:
        return fail("give --output FILE.gguf", 2)
    source = resolve_source(ModelConfig(model=cfg.model, adapter=cfg.adapter))
    if not source.path.endswith(".gguf") or not Path(source.path).is_file():
        return fail(f"the base model must be a .gguf file; '{source.path}' is not one", 2)
    quiet_library_output()
    try:
        path = export_gguf(Path(source.path), source.adapter, Path(cfg.output), cfg.type)
    except (ExportError, ModelLoadError) as error:
        return fail(error, 1)
    merged = f" + {Path(source.adapter).name}" if source.adapter else ""
    print(f"wrote {path} ({source.name}{merged}, {cfg.type}, {path.stat().st_size / 2**20:.0f} MiB)")
    return 0
