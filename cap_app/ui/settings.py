"""The settings both tabs share: the page's widgets as the engine's configs.

A page builds the same RefineConfig, ModelConfig and BackendConfig the CLI builds, starting at the
engine's defaults and within the bounds a public server grants one visitor (cap_app.ui.hosting).
The page's "time_limit_s" is RefineConfig.timeout_s under the name the Gradio API has always
published (API clients send it by that name); it is translated here and nowhere else.
"""

from __future__ import annotations

import os

import gradio as gr

from cap_app.engine.refine import RefineConfig
from cap_app.ui.hosting import DEFAULT_MODEL_CHOICE, WEB_LIMITS, WEB_STEPS, backend_choices, model_choices


def model_config(choice: str):
    """The ModelConfig for a model picked in a page; only the operator's choices are accepted."""
    from cap_app.models.loading import ModelConfig

    if choice not in model_choices():
        raise ValueError(f"unknown model {choice!r}; this server offers: {', '.join(model_choices())}")
    return ModelConfig(model=None if choice == DEFAULT_MODEL_CHOICE else choice)


def backend_config(choice: str):
    """The BackendConfig for a backend picked in a page: only the offered ones, and the operator's server."""
    from cap_app.backends import BackendConfig

    if choice not in backend_choices():
        raise ValueError(f"unknown backend {choice!r}; this server offers: {', '.join(backend_choices())}")
    base_url = os.environ.get("CAP_BASE_URL") if choice in ("auto", "openai") else None
    return BackendConfig(backend=choice, base_url=base_url)


def refine_config(
    strategy: str, n: float, temperature: float, max_new_tokens: float, time_limit_s: float, override: str = "located"
):
    """The settings panel as the engine's RefineConfig (which checks its own ranges, as for the CLI),
    within the bounds a public server grants one visitor (the API can send any number)."""
    for name, value in (
        ("n", n),
        ("temperature", temperature),
        ("max_new_tokens", max_new_tokens),
        ("time_limit_s", time_limit_s),
    ):
        low, high = WEB_LIMITS[name]
        if not low <= float(value) <= high:
            raise ValueError(f"{name} must be between {low} and {high} on this server")
    return RefineConfig(
        strategy=strategy,
        n=int(n),
        temperature=float(temperature),
        max_new_tokens=int(max_new_tokens),
        timeout_s=float(time_limit_s),
        override=override,
    )


def default_settings() -> dict:
    """`refine_config`'s arguments at RefineConfig's defaults: every page starts where the CLI does,
    so a page refines as the CLI and the evaluations do."""
    config = RefineConfig()
    return {
        "strategy": config.strategy,
        "n": config.n,
        "temperature": config.temperature,
        "max_new_tokens": config.max_new_tokens,
        "time_limit_s": config.timeout_s,
        "override": config.override,
    }


def setting_slider(name: str, label: str, **kwargs) -> gr.Slider:
    """The slider for setting `name`: the range a visitor is granted, starting at the default."""
    return gr.Slider(*WEB_LIMITS[name], value=default_settings()[name], step=WEB_STEPS[name], label=label, **kwargs)
