"""The charts as a browser draws them: plotly.js places the labels, so only a browser shows whether
they collide (issue 25: at N=8 "#8", "#3", "#2, #4, #5" and "#6" sat on one another)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cap_app.engine.results import Candidate
from cap_app.sandbox.result import ExecResult
from cap_app.ui.charts import candidates_figure
from tests.ui.test_served_app import CHROMIUM, CHROMIUM_ARGS


def _eight_alike_programs(janet_result):
    """A vote of 8 programs a few tokens and a fraction of a millisecond apart, as the offline model writes them."""
    shapes = [(48, 2.1), (46, 2.0), (47, 2.2), (46, 2.0), (46, 2.1), (50, 2.3), (45, 1.9), (47, 2.0)]
    candidates = [
        Candidate("", "print(18)", ExecResult("ok", stdout="18\n", answer="18", duration_ms=ms), "18", tokens=tokens)
        for tokens, ms in shapes
    ]
    return dataclasses.replace(janet_result, strategy="vote", candidates=candidates, chosen=0, votes={"18": 8})


@pytest.mark.browser
def test_the_programs_chart_labels_do_not_overlap_at_n_8(janet_result, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make .venv/.dev does it)")
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "programs.html"
    candidates_figure(_eight_alike_programs(janet_result)).write_html(page_file, include_plotlyjs=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 460, "height": 600})  # a third of the page's width
            page.goto(page_file.as_uri())
            page.wait_for_selector(".main-svg")
            labels = page.eval_on_selector_all(
                ".textpoint text, text.bartext",
                "nodes => nodes.map(n => { const b = n.getBoundingClientRect();"
                " return {text: n.textContent, x0: b.left, x1: b.right, y0: b.top, y1: b.bottom}; })",
            )
            width = page.eval_on_selector(".main-svg", "svg => svg.getBoundingClientRect().width")
        finally:
            browser.close()
    assert labels, "no labels drawn"
    for i, a in enumerate(labels):
        assert a["x1"] <= width + 1, f"{a['text']!r} is cut at the chart's edge"
        for b in labels[i + 1 :]:
            apart = a["x1"] <= b["x0"] or b["x1"] <= a["x0"] or a["y1"] <= b["y0"] or b["y1"] <= a["y0"]
            assert apart, f"{a['text']!r} overlaps {b['text']!r}"
