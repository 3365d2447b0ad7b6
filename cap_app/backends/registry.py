"""Every backend by name: what it is for, the settings only it takes, what it needs, where it is made.

The command line's --backend choices and help, `auto`, the page's backend choices and its help all
read this table. A new backend is one module (its Backend class and `from_settings(model_cfg,
backend_cfg)`, the factory named here) plus one entry below.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path

from cap_app.backends.base import BackendError


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    help: str  # what it runs, one line
    module: str  # defines `from_settings(model_cfg, backend_cfg) -> Backend`
    # The ModelConfig / BackendConfig fields only this backend takes, each with the sentence that
    # refuses it to another backend ({name}: that backend): a setting no backend honours silently.
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    package: str | None = None  # a package it needs installed (importable)
    needs_server: bool = False  # it sends to a server, so is offered only where one is named
    keeps_own_model: bool = False  # its factory holds the model itself (`get_model`): not cached again

    def available(self, base_url: str | None) -> bool:
        """Whether it can run here: its package installed, its server named."""
        installed = self.package is None or importlib.util.find_spec(self.package) is not None
        return installed and (bool(base_url) or not self.needs_server)

    def load(self, model_cfg, backend_cfg):
        return importlib.import_module(self.module).from_settings(model_cfg, backend_cfg)


_IN_PROCESS_ONLY = "{name} runs the model as its file or server has it"
REGISTRY: dict[str, BackendEntry] = {
    "transformers": BackendEntry(
        help="the model in this process; any Hub model or folder, 4-bit on CUDA",
        module="cap_app.backends.transformers",
        options={
            "quantization": "--quantization applies to the transformers backend only; " + _IN_PROCESS_ONLY,
            "device": "--device applies to the transformers backend only; " + _IN_PROCESS_ONLY,
            "dtype": "--dtype applies to the transformers backend only; " + _IN_PROCESS_ONLY,
            "allow_plain_prompt": "--allow-plain-prompt applies to the transformers backend only; "
            "{name} needs a chat template",
        },
        keeps_own_model=True,
    ),
    "llama.cpp": BackendEntry(
        help="a .gguf in this process through llama-cpp-python, fast on CPU",
        module="cap_app.backends.llama_cpp",
        options={"contexts": "--contexts is for the llama.cpp backend; the {name} backend does not use it"},
        package="llama_cpp",
    ),
    "openai": BackendEntry(
        help="an OpenAI-compatible /v1 server (vLLM, SGLang, TGI, llama.cpp's server), for scale",
        module="cap_app.backends.openai",
        options={"base_url": "--base-url is for the openai backend; the {name} backend runs the model in this process"},
        needs_server=True,
    ),
}
AUTO = "auto"
BACKENDS = (AUTO, *REGISTRY)  # what --backend and $CAP_BACKEND accept
AUTO_HELP = (
    "$CAP_BACKEND, else openai given a server URL, else llama.cpp for a .gguf model on a machine without "
    "CUDA when llama-cpp-python is installed (fast on CPU), else transformers"
)


def has_cuda() -> bool:
    """Whether an NVIDIA driver is present; read from /proc so that choosing a backend does not
    import torch (a second of a llama.cpp start)."""
    return Path("/proc/driver/nvidia/version").exists()


def auto_backend(model_path: str, base_url: str | None) -> str:
    """What `auto` stands for once $CAP_BACKEND is unset (`AUTO_HELP` says it in words)."""
    if REGISTRY["openai"].available(base_url):
        return "openai"
    if model_path.endswith(".gguf") and not has_cuda() and REGISTRY["llama.cpp"].available(base_url):
        return "llama.cpp"
    return "transformers"


def refuse_foreign_options(name: str, *configs) -> None:
    """BackendError for a setting (away from its default) that only another backend takes."""
    for other, entry in REGISTRY.items():
        if other == name:
            continue
        for config in configs:
            defaults = {field.name: field.default for field in dataclasses.fields(config)}
            for option, refusal in entry.options.items():
                if option in defaults and getattr(config, option) != defaults[option]:
                    raise BackendError(refusal.format(name=name))


def backends_help() -> str:
    """The --backend help: each backend in a few words, and the `auto` rule."""
    each = "; ".join(f"{name}: {entry.help}" for name, entry in REGISTRY.items())
    return f"what generates: {each}; {AUTO}: {AUTO_HELP}"
