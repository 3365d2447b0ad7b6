"""Processes seen through /proc: what the sandbox benchmark and the runner tests count and watch."""

from __future__ import annotations

import os


def zygote_processes(zygote: int) -> list[int]:
    """A zygote and its copies (see cap_app/sandbox/zygote.py): its children while it runs no
    program. For adding up their CPU time or checking that they stop."""
    copies = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == zygote:
                    copies.append(int(entry))
        except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
            continue
    return [zygote, *copies]
