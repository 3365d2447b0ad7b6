"""What travels over a zygote's socket, one connection per run (see zygote.py).

    client -> zygote   LIMIT: the time limit, 8 bytes (read by the zygote, which enforces it)
                       BODY:  (source, code object, settings) in marshal; the client compiled the
                              code under the policy (read by the child, trusted as the client is)
    child  -> client   one JSON line: the result
    zygote -> client   "\\n" + one JSON line, after the child has been reaped:
                       {"wait_status": N, "killed": bool} or {"error": "..."}

The zygote's line is always the last one: it is written only once the child is gone. A child
may write anything (it ran hostile code), so the client checks the result's shape and takes
kills and crashes from the zygote's line alone.
"""

from __future__ import annotations

import dataclasses
import json
import marshal
import os
import signal
import struct
import types
from typing import Any

from cap_app.sandbox.config import BOUNDS, SandboxConfig

LIMIT_BYTES = 8
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a program of MAX_PROGRAM_CHARS and its code object
MAX_REPLY_BYTES = 64 * 1024 * 1024  # output (<= 16 MiB) + trace (<= 2M chars), JSON-escaped


class BadReply(ValueError):
    """The connection closed without the zygote's last line: the zygote died or was killed."""


SETTINGS = tuple(field.name for field in dataclasses.fields(SandboxConfig))  # in SandboxConfig's order


def request_body(source: str, compiled: types.CodeType, config: SandboxConfig) -> bytes:
    """marshal, not JSON: the child decodes it in C, touching far fewer pages (see zygote.py)."""
    return marshal.dumps((source, compiled, tuple(getattr(config, name) for name in SETTINGS)))


def request_payload(source: str, compiled: types.CodeType, config: SandboxConfig) -> bytes:
    return struct.pack("<d", config.timeout_s) + request_body(source, compiled, config)


def read_limit(data: bytes) -> float | None:
    """The time limit the zygote enforces, None unless it is one SandboxConfig allows."""
    low, high = BOUNDS["timeout_s"]
    if len(data) != LIMIT_BYTES:
        return None
    (timeout_s,) = struct.unpack("<d", data)
    return timeout_s if low <= timeout_s <= high else None  # NaN fails both


def read_request(body: bytes) -> tuple[str, types.CodeType, SandboxConfig]:
    """(source, code, config) from a request body; raises ValueError or TypeError if malformed."""
    source, code, settings = marshal.loads(body)
    if not isinstance(source, str) or not isinstance(code, types.CodeType) or not isinstance(settings, tuple):
        raise TypeError("expected the source text, its code object and the settings")
    return source, code, SandboxConfig(*settings)


def exit_line(wait_status: int, killed: bool) -> bytes:
    return b'\n{"wait_status": %d, "killed": %s}\n' % (wait_status, b"true" if killed else b"false")


def zygote_error(message: str) -> bytes:
    return b"\n" + json.dumps({"error": message}).encode("utf-8") + b"\n"


def split_reply(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """(what the child wrote, the zygote's last line); BadReply if that line is missing."""
    child_output, _, last = data.removesuffix(b"\n").rpartition(b"\n")
    try:
        trailer = json.loads(last) if data.endswith(b"\n") else None
    except ValueError:
        trailer = None
    if not isinstance(trailer, dict):
        raise BadReply("the sandbox server sent no result")
    return child_output, trailer


def result_data(data: bytes, config: SandboxConfig) -> dict[str, Any]:
    """The run's result as the child wrote it, or the zygote's account of why there is none."""
    child_output, trailer = split_reply(data)
    if "error" in trailer:
        return {"status": "error", "error": str(trailer["error"])}
    status, killed = trailer.get("wait_status"), trailer.get("killed")
    if not isinstance(status, int) or not isinstance(killed, bool):
        raise BadReply("the sandbox server sent no result")
    if killed or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return dead_child_response(status, killed, config)
    try:
        return json.loads(child_output)
    except ValueError:
        return dead_child_response(status, killed, config)


def dead_child_response(status: int, killed: bool, config: SandboxConfig) -> dict[str, Any]:
    if killed or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        return {"status": "timeout", "error": f"time limit of {config.timeout_s:g} s exceeded"}
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum == signal.SIGKILL:  # not ours: the kernel's out-of-memory killer
            return {"status": "memory", "error": f"memory limit of {config.memory_mb} MB exceeded"}
        if signum == signal.SIGXFSZ:
            return {"status": "error", "error": "writing files is not allowed"}
        return {"status": "error", "error": f"the program crashed ({signal.Signals(signum).name})"}
    return {"status": "error", "error": f"the program ended without a result (exit status {os.WEXITSTATUS(status)})"}
