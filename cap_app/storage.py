"""Where files that must outlive a restart go: Hugging Face Spaces persistent storage when mounted.

A Space's own disk is wiped at every restart; with persistent storage enabled, `/data` is mounted
and kept. The model cache (`cap_app.models.loading.cache_dir`), the Hub cache and the annotation database
(`cap_app.annotate.store.default_db_path`) go there when it is present, so a restart neither converts the
model again nor loses judgements. Standard library only: it is read before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

SPACES_DATA_DIR = "/data"


def persistent_dir(data_dir: str = SPACES_DATA_DIR) -> Path | None:
    """The persistent storage folder when mounted and writable, else None."""
    return Path(data_dir) if os.path.isdir(data_dir) and os.access(data_dir, os.W_OK) else None


def use_persistent_storage(data_dir: str = SPACES_DATA_DIR) -> Path | None:
    """Point the Hugging Face cache at persistent storage unless the operator chose one ($HF_HOME),
    as Spaces' documentation advises; must run before huggingface_hub is imported (it reads $HF_HOME
    once). Returns the folder, or None without persistent storage (nothing changes then)."""
    folder = persistent_dir(data_dir)
    if folder is not None:
        os.environ.setdefault("HF_HOME", str(folder / ".huggingface"))
    return folder


def is_hosted() -> bool:
    """Whether this runs on a Hugging Face Space or in a container, whose disk does not outlive a
    restart (a Space sets SPACE_ID; Docker and Podman leave a marker file at the root)."""
    return bool(os.environ.get("SPACE_ID")) or any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv"))


def is_persistent(path: str | os.PathLike, data_dir: str = SPACES_DATA_DIR) -> bool:
    """Whether `path` lies in the persistent storage folder."""
    folder = persistent_dir(data_dir)
    return folder is not None and Path(path).resolve().is_relative_to(folder.resolve())
