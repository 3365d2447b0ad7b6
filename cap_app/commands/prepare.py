"""`python -m cap_app prepare`: fill the model cache now, as the app does when it starts.

    python -m cap_app prepare                    # the offline default on this machine's backend
    python -m cap_app prepare --prune            # ... and drop cache entries that backend never reads

The Dockerfile runs it at build time, so the image carries the converted model and a container's
first visitor waits for nothing. It runs the app's own preparation (`cap_app.backends.preparation.load`,
the same settings as the page's first Refine), printing each step with its time. `--prune`
removes, after a llama.cpp preparation, any safetensors copies of the model (about 1 GB, left by
a transformers load) that llama.cpp never reads; a visitor who picks transformers makes them again.
Exit status: 0 when the model is ready, 1 when it cannot be loaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from cap_app.commands.common import fail

HELP = "Prepare the app's model now (convert, merge, write the llama.cpp file) so the first visitor does not wait."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "transformers", "llama.cpp"),
        help="backend to prepare for (default: auto = $CAP_BACKEND, else what the app picks on this machine)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="after preparing for llama.cpp, remove cache entries only transformers reads (smaller images)",
    )


def main(args: argparse.Namespace) -> int:
    from cap_app.backends import BackendConfig, BackendError, preparation, resolve_backend
    from cap_app.models.loading import ModelConfig, ModelLoadError, cache_dir, quiet_library_output

    quiet_library_output()
    model_cfg, backend_cfg = ModelConfig(), BackendConfig(backend=args.backend)
    began = time.monotonic()

    def show(phase: str) -> None:
        print(f"[{time.monotonic() - began:5.1f} s] {phase}", file=sys.stderr, flush=True)

    try:
        name = resolve_backend(model_cfg, backend_cfg)
        loading = preparation.load(model_cfg, backend_cfg, listener=show)
        backend = loading.result()
    except (ModelLoadError, BackendError) as error:
        return fail(error, 1)
    if args.prune and name == "llama.cpp":
        for folder in ("gguf", "merged"):
            shutil.rmtree(cache_dir() / folder, ignore_errors=True)
    size = sum(f.stat().st_size for f in cache_dir().rglob("*") if f.is_file()) if cache_dir().is_dir() else 0
    print(
        f"ready: {backend.description} on {name} in {loading.elapsed_s:.1f} s; "
        f"cache {cache_dir()} holds {size / 2**20:.0f} MiB"
    )
    return 0
