"""The app as a visitor meets it: `python app.py` in a subprocess on a tiny model, driven through
gradio_client (the API) and a real headless chromium (the page).

The README screenshot comes from the browser test run on the real offline model:
    CAP_UI_TEST_MODEL=default CAP_UI_TEST_MAX_TOKENS=256 CAP_UI_SCREENSHOT=docs/screenshot.png \
        .venv/bin/python -m pytest tests/ui/test_served_app.py -k browser
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cap_app.ui.examples import load_examples
from tests.helpers.paths import ROOT
from tests.ui.conftest import JANET_DRAFT, JANET_QUESTION

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
QUEUE_SIZE = 2
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_model_dir, tmp_path_factory):
    """`python app.py` on a free port with the tiny model, a queue of 2 and one refinement at a time."""
    port = _free_port()
    model = os.environ.get("CAP_UI_TEST_MODEL") or tiny_model_dir
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    env = {
        **os.environ,
        "CAP_MODEL": model,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "CAP_QUEUE_SIZE": str(QUEUE_SIZE),
        "CAP_CONCURRENCY": "1",
        "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-tmp")),
        "CAP_DB_PATH": str(tmp_path_factory.mktemp("db") / "annotations.db"),
    }
    if model == "default":  # the offline default model: no CAP_MODEL at all
        del env["CAP_MODEL"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"app did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _refine_args(model: str, **overrides):
    args = dict(
        question=JANET_QUESTION,
        draft=JANET_DRAFT,
        gold="18",
        model_choice=model,
        strategy="greedy",
        n=1,
        temperature=0.0,
        max_new_tokens=24,
        time_limit_s=5,
    )
    return {**args, **overrides}


def test_api_refines_and_returns_every_view(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    served = _served_model(client)  # the model dropdown offers the served model, nothing else
    status, code, verdict, side_by_side, trace, stdout, votes, times, _ = client.predict(
        **_refine_args(served), api_name="/refine"
    )
    assert status == "Done."
    assert 'class="cap-verdict"' in verdict and "Gold answer 18" in verdict
    assert "16 - 3 = 13 ✓" in side_by_side
    assert votes is not None and times is not None


def _served_model(client) -> str:
    params = client.view_api(return_format="dict")["named_endpoints"]["/refine"]["parameters"]
    (model_param,) = [p for p in params if p["parameter_name"] == "model_choice"]
    return model_param["parameter_default"]


def test_a_full_queue_answers_busy_try_again(app_url):
    """One refinement runs, QUEUE_SIZE wait, the next visitors are told the app is busy."""
    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    clients = [Client(app_url, verbose=False) for _ in range(QUEUE_SIZE + 3)]
    served = _served_model(clients[0])
    running = clients[0].submit(**_refine_args(served, max_new_tokens=160), api_name="/refine")
    deadline = time.monotonic() + 60
    while running.status().code not in (Status.PROCESSING, Status.ITERATING) and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = [client.submit(**_refine_args(served, max_new_tokens=16), api_name="/refine") for client in clients[1:]]
    outcomes: list[str] = []
    for job in waiting:
        try:
            outcomes.append(job.result(timeout=120)[0])
        except QueueError as error:
            outcomes.append(str(error))
    assert running.result()[0] == "Done."
    assert sorted(outcomes) == ["Done."] * QUEUE_SIZE + ["Queue is full! Please try again."] * 2


def test_stop_ends_the_running_refinement_of_the_same_session(app_url):
    from gradio_client import Client
    from gradio_client.utils import Status

    client = Client(app_url, verbose=False)
    job = client.submit(**_refine_args(_served_model(client), max_new_tokens=1000), api_name="/refine")
    deadline = time.monotonic() + 60
    while job.status().code != Status.ITERATING and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Client(app_url, verbose=False).predict(api_name="/stop") == "Nothing to stop."  # another visitor
    assert client.predict(api_name="/stop") == "Stopping…"
    assert job.result(timeout=60)[0] == "Stopped."


@pytest.mark.browser
def test_browser_click_example_refine_and_see_the_views(app_url, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make .venv/.dev does it)")
    from playwright.sync_api import expect, sync_playwright

    screenshot = Path(os.environ.get("CAP_UI_SCREENSHOT") or tmp_path / "screenshot.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            page.get_by_text(load_examples()[0].label).first.click()
            expect(page.locator("#question textarea")).to_have_value(JANET_QUESTION)
            expect(page.locator("#gold input, #gold textarea").first).to_have_value("18")
            page.locator("#settings").get_by_text("Settings", exact=True).click()  # short programs keep it quick
            tokens = page.locator("#max-new-tokens input[type=number]")
            tokens.fill(os.environ.get("CAP_UI_TEST_MAX_TOKENS", "24"))
            tokens.press("Enter")
            page.click("#refine")
            verdict = page.locator("#verdict .cap-verdict")
            expect(verdict).to_be_visible(timeout=600_000)
            expect(page.locator("#verdict .cap-verdict-sentence")).to_contain_text("Gold answer 18")
            side = page.locator("#side-by-side .cap-sbs")
            expect(side).to_be_visible()
            expect(side.locator("td").first).to_be_visible()
            expect(side).to_contain_text("16 - 3 = 13 ✓")
            plot = page.locator("#votes-plot .js-plotly-plot .main-svg").first
            expect(plot).to_be_visible(timeout=30_000)
            assert page.locator("#votes-plot .bars path").count() >= 1  # drawn bars, not a placeholder
            assert page.locator("#times-plot .bars path").count() >= 1
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
