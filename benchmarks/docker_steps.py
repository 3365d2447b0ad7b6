"""The Dockerfile's steps run without Docker, as uid 1000 in a throwaway folder, timed and measured.

    python -m benchmarks.docker_steps                    # as root: build, start, first visitor, stop
    python -m benchmarks.docker_steps --keep DIR         # keep the folder (default: removed at the end)

Where no Docker engine is (this development VM), this is how the image's recipe is checked: the
Dockerfile is read and each instruction after `FROM` is carried out here, with these translations:
- the root steps before `USER` (apt-get of the compiler and cmake, useradd) are skipped: both tools
  are on this machine and uid 1000 exists (the script checks);
- `/home/user` becomes `<folder>/home/user`, owned by uid 1000, and the image's Python is a venv
  made there by Debian's python3 (so `pip install --user` drops `--user`: the venv is the user's);
- `TORCH_INDEX` (the CPU wheel index, unreachable here) becomes PyPI, where pip's configured wheel
  folder supplies the same CPU wheel, as `make` gets it; any other `--build-arg NAME=VALUE` is kept;
- `COPY` copies the working tree minus .dockerignore's patterns; `CMD` starts the app.
Then it measures what the issue asks: each step's time, the environment's and the model cache's
sizes, the page's start, the first visitor's greedy refinement (`benchmarks.first_visitor`), and
the stop on SIGTERM. Not measured: the base image and apt layer (no engine), the image's
compressed size. Prints one JSON object and writes it to --output.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, write_json
from benchmarks.first_visitor import measure

UID = 1000
IMAGE_HOME = "/home/user"
LOCAL_TORCH_INDEX = "https://pypi.org/simple"  # + the wheel folder in pip's configuration: the CPU wheel


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        if fnmatch.fnmatch(relative, pattern) or any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def copy_context(destination: Path, source: str) -> None:
    """`COPY src dest` from the working tree, minus what .dockerignore names."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    origin = ROOT / source if source != "." else ROOT
    if origin.is_file():
        shutil.copy2(origin, destination / origin.name if destination.is_dir() else destination)
        return
    for path in sorted(origin.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if ignored(relative, patterns) or path.is_dir():
            continue
        target = destination / path.relative_to(origin)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def as_user(env: dict) -> dict:
    return {"preexec_fn": lambda: (os.setgroups([]), os.setgid(UID), os.setuid(UID)), "env": env}


def run_dockerfile(root: Path, build_args: dict[str, str]) -> dict:
    home = root / IMAGE_HOME.lstrip("/")
    home.mkdir(parents=True)
    venv = root / "python"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    for path in (root, home, venv):
        for dirpath, _, files in os.walk(path):
            os.chown(dirpath, UID, UID)
            for name in files:
                os.chown(os.path.join(dirpath, name), UID, UID, follow_symlinks=False)
    keep = {k: v for k, v in os.environ.items() if k.startswith(("PIP_", "LANG", "LC_", "TZ", "OPENBLAS"))}
    env = {**keep, "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
    args: dict[str, str] = {}
    workdir, user, steps, command = home, "root", [], None

    def mapped(text: str) -> str:
        return text.replace(IMAGE_HOME, str(home))

    for word, rest in instructions(ROOT / "Dockerfile"):
        began = time.monotonic()
        if word == "FROM":
            continue
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = build_args.get(name, default)
            continue
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = mapped(re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value))
            continue
        if word == "USER":
            user = rest
            assert pwd.getpwuid(UID), "uid 1000 is missing"
            continue
        if word == "WORKDIR":
            workdir = Path(mapped(rest))
            workdir.mkdir(parents=True, exist_ok=True)
            os.chown(workdir, UID, UID)
            continue
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            destination = workdir / parts[1] if parts[1] != "." else workdir
            copy_context(destination, parts[0])
            for dirpath, _, files in os.walk(workdir):
                os.chown(dirpath, UID, UID)
                for name in files:
                    os.chown(os.path.join(dirpath, name), UID, UID)
            steps.append({"step": f"COPY {rest}", "s": round(time.monotonic() - began, 1)})
            continue
        if word == "RUN":
            if user == "root":
                needed = ["cmake", "gcc", "g++"] if "apt-get" in rest else []
                assert all(shutil.which(tool) for tool in needed), f"{needed} missing here"
                steps.append({"step": f"RUN {rest[:60]}", "skipped": "root step; its result exists here"})
                continue
            line = mapped(rest).replace(" --user", "")
            line = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), env.get(m.group(1), m.group(0))), line)
            done = subprocess.run(["bash", "-c", line], cwd=workdir, capture_output=True, text=True, **as_user(env))
            steps.append({"step": f"RUN {rest[:80]}", "s": round(time.monotonic() - began, 1), "rc": done.returncode})
            if done.returncode != 0:
                raise RuntimeError(f"step failed: {line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            continue
        if word == "CMD":
            command = json.loads(rest)
    return {"home": home, "venv": venv, "workdir": workdir, "env": env, "steps": steps, "command": command}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-arg", action="append", default=[], help="NAME=VALUE, as docker build takes it")
    parser.add_argument("--keep", default=None, help="build in this folder and keep it")
    parser.add_argument("--output", default="runs/bench/docker_steps.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the steps run as uid 1000 through setuid")
    build_args = {"TORCH_INDEX": LOCAL_TORCH_INDEX, **dict(a.split("=", 1) for a in args.build_arg)}
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cap-docker-steps-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    try:
        began = time.monotonic()
        built = run_dockerfile(root, build_args)
        build_s = time.monotonic() - began
        cache = Path(built["env"]["CAP_CACHE_DIR"])
        torch_version = subprocess.run(
            [str(built["venv"] / "bin/python"), "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        figures = {
            "build_s": round(build_s, 1),
            "steps": built["steps"],
            "torch": torch_version,
            "python_env_mib": round(folder_mib(built["venv"]), 0),
            "model_cache_mib": round(folder_mib(cache), 0),
            "app_folder_mib": round(folder_mib(built["workdir"]), 1),
            "command": built["command"],
        }
        write_json(args.output, figures)  # the build's figures, kept should the start fail
        work = root / "run"
        work.mkdir()
        os.chown(work, UID, UID)
        figures["first_visitor"] = measure(
            cache,
            0.0,
            work,
            python=str(built["venv"] / "bin/python"),
            cwd=built["workdir"],
            extra_env=built["env"],
            preexec_fn=lambda: (os.setgroups([]), os.setgid(UID), os.setuid(UID)),
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    write_json(args.output, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
