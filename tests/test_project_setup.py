"""The fresh-clone contract: Dockerfile, Spaces front matter, requirements that bring every import, CLI help."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cap_app.cli import COMMANDS, main
from tests.helpers.paths import ROOT


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


# Imported where only some machines have them, never at start-up: name -> why.
OPTIONAL_IMPORTS = {"spaces": "ZeroGPU Spaces provide it; cap_app/ui/hosting.py imports it only there"}


def third_party_imports() -> dict[str, str]:
    """Top-level modules outside the standard library that the app imports -> a file importing it."""
    found = {}
    for path in sorted([*(ROOT / "cap_app").rglob("*.py"), ROOT / "app.py"]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "cap_app":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def installed_by_requirements() -> set[str]:
    """The distributions `pip install -r requirements.txt` brings: the pinned ones and, as installed
    here, everything they require (with the extras asked for)."""
    todo = [Requirement(f"{name}=={version}") for name, version in pinned_requirements().items()]
    found: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:  # not for this platform
            continue
        for text in requires:
            needed = Requirement(text)
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return found


def test_every_package_the_app_imports_comes_with_the_requirements():
    """A fresh clone, the Docker image and a Space install requirements.txt and nothing else: a
    module the app imports that no pinned package brings works here and fails there. (Whether the
    pinned versions work together is what the rest of the suite runs on; gradio's bundled plotly.js
    drawing plotly.py's figures is tests/ui/test_served_app.py.)"""
    brought = installed_by_requirements()
    providers = metadata.packages_distributions()
    missing = {
        module: path
        for module, path in third_party_imports().items()
        if module not in OPTIONAL_IMPORTS
        and not {canonicalize_name(d) for d in providers.get(module, [module])} & brought
    }
    assert not missing, f"imported, but not installed by requirements.txt: {missing}"


def test_make_installs_the_pinned_torch_first():
    """`make` installs torch on its own first (the CPU or CUDA wheel); another version than the pin
    would be replaced by the requirements' one, or refused, on every fresh install."""
    first = re.search(r"\$\(PIP\) torch==(\S+)", (ROOT / "Makefile").read_text())
    assert first and first.group(1) == pinned_requirements()["torch"]


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
    code = (
        "import sys; from cap_app.cli import make_parser; make_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
