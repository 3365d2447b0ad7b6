"""`python -m cap_app.backends.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`, same arguments), made safe on CPUs with AMX.

llama.cpp's AMX weight buffers crash the server on its first real prompt on such CPUs (see
`llama_cpp.weight_repacking`), and the server has no option to avoid them; this runs it with
them off there, and unchanged elsewhere.
"""

from __future__ import annotations

import runpy

from cap_app.backends.llama_cpp import cpu_has_amx, weight_repacking

if __name__ == "__main__":
    with weight_repacking(not cpu_has_amx()):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
