"""The fresh-clone contract: Dockerfile, Spaces front matter, pinned requirements, CLI help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cap_app.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def test_dockerfile_runs_app_as_uid_1000_on_port_7860():
    rows = dockerfile_instructions()
    assert rows[0] == ("FROM", "python:3.12-slim")
    assert any(k == "RUN" and "--uid 1000" in v for k, v in rows)
    users = [v for k, v in rows if k == "USER"]
    assert users and users[-1] == "user", "the app must not run as root"
    env = " ".join(v for k, v in rows if k == "ENV")
    assert "GRADIO_SERVER_NAME=0.0.0.0" in env and "GRADIO_SERVER_PORT=7860" in env
    assert ("EXPOSE", "7860") in rows
    assert any(k == "RUN" and "-r requirements.txt" in v for k, v in rows)
    # llama-cpp-python builds from source: the compiler is installed before the requirements
    compiler = next(i for i, (k, v) in enumerate(rows) if k == "RUN" and "build-essential cmake" in v)
    assert compiler < next(i for i, (k, v) in enumerate(rows) if k == "RUN" and "-r requirements.txt" in v)
    assert (ROOT / "packages.txt").read_text().split() == ["build-essential", "cmake"]  # the same on a Space
    assert rows[-1] == ("CMD", '["python", "app.py"]')


def spaces_front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must start with Hugging Face Spaces front matter"
    pairs = (line.split(":", 1) for line in match.group(1).splitlines() if ":" in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def pinned_requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"unpinned requirement: {line}"
            pins[name.lower()] = version
    return pins


def test_spaces_front_matter_matches_pins():
    meta = spaces_front_matter()
    assert meta["sdk"] == "gradio"
    assert meta["app_file"] == "app.py"
    assert meta["python_version"] == "3.12"
    assert meta["sdk_version"] == pinned_requirements()["gradio"]


def test_requirements_pin_the_stack():
    pins = pinned_requirements()
    for name in ["torch", "transformers", "gradio", "bitsandbytes", "restrictedpython", "plotly",
                 "gguf", "math-verify", "accelerate", "peft", "trl", "llama-cpp-python[server]", "httpx"]:
        assert name in pins, name
    assert pins["torch"] == "2.13.0"
    assert pins["gradio"].startswith("6.") and pins["transformers"].startswith("5.")
    assert pins["restrictedpython"].startswith("9.")
    # gradio bundles plotly.js 3.x; plotly.py 7 targets plotly.js 4.
    assert pins["plotly"].startswith("6.")


@pytest.mark.parametrize("command", [[]] + [[name] for name in COMMANDS])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m cap_app")
    if command:
        assert command[0] in out


def test_module_entry_point_runs_without_heavy_imports():
    """`--help` must stay instant: no torch/transformers/gradio import just to list commands."""
    code = ("import sys; from cap_app.cli import make_parser; make_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
