"""Loss curves of a training run as one self-contained plotly HTML file (from trainer log history)."""

from __future__ import annotations

from pathlib import Path


def write_loss_html(log_history: list[dict], path: Path, *, title: str, metrics: tuple[str, ...]) -> Path | None:
    """One panel per logged metric against the step; None when nothing was logged yet."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    present = [m for m in metrics if any(m in entry for entry in log_history)]
    if not present:
        return None
    figure = make_subplots(rows=len(present), cols=1, shared_xaxes=True, subplot_titles=present)
    for row, metric in enumerate(present, 1):
        points = [(entry["step"], entry[metric]) for entry in log_history if metric in entry]
        figure.add_trace(
            go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=metric),
            row=row,
            col=1,
        )
    figure.update_layout(title=title, height=300 * len(present), showlegend=False, template="plotly_white")
    figure.update_xaxes(title_text="step", row=len(present), col=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(path, include_plotlyjs="cdn")
    return path
