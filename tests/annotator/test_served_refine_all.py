"""Refine all in a real browser on a served app (`python -m cap_app serve`, accounts, headless
chromium), with the real offline default model (llama.cpp, the bundled model): an annotator is
refused and told why; an admin starts it on a small batch, and the progress line and the items table
fill in on the page without a reload, on the annotator's page too."""

from __future__ import annotations

import re

import pytest

from cap_app.annotate.store import Store
from cap_app.engine.triage import TRIAGE_ORDER
from tests.annotator.conftest import write_jsonl
from tests.annotator.test_served_annotator import WAIT_MS, Served, annotate_page

REFINE_WAIT_MS = 300_000  # the model loads, then two greedy items on two shared cores
DRAFTS = [
    {"question": "Tom has 5 apples and buys 7 more. How many apples does he have?", "draft": "5 + 7 = 13\nA: 13"},
    {"question": "A box holds 6 eggs. How many eggs are in 4 boxes?", "draft": "6 * 4 = 24\nA: 24"},
]


@pytest.fixture(scope="module")
def served(tmp_path_factory, password_hash):
    served = Served(tmp_path_factory.mktemp("served-refine-all"), password_hash)
    served.drafts_path = write_jsonl(served.batch_path.parent / "two-drafts.jsonl", DRAFTS)
    yield served.running()
    if served.process is not None and served.process.poll() is None:
        served.kill()


def open_drafts(pw, served: Served, name: str, role: str):
    """A chromium page signed in as `name` on the Annotate tab with the two-draft batch loaded."""
    return annotate_page(pw, served.url, name, role, served.drafts_path, 2)


@pytest.mark.slow
def test_an_admin_refines_all_with_the_offline_model_and_every_page_follows(served):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        ann_browser, ann = open_drafts(pw, served, "ann", "annotator")
        ann_line = ann.locator("#cap-ann-refine-all-line")
        expect(ann_line).to_contain_text("Refine all has not run on this batch: 0 / 2 items refined", timeout=WAIT_MS)
        ann.click("#cap-ann-refine-all")
        expect(ann_line).to_contain_text("Only an admin may start or stop", timeout=WAIT_MS)
        with Store(served.db_path)._connect() as conn:
            assert conn.execute("SELECT COUNT(*) FROM refine_jobs").fetchone()[0] == 0  # nothing started

        boss_browser, boss = open_drafts(pw, served, "boss", "admin")
        boss.click("#cap-ann-refine-all")
        line = boss.locator("#cap-ann-refine-all-line")
        expect(line).to_contain_text("Refine all is running", timeout=WAIT_MS)
        expect(line).to_contain_text("Refine all is done: 2 / 2 items refined", timeout=REFINE_WAIT_MS)
        boss.get_by_role("button", name="All items").click()  # the table filled in as items were refined, no reload
        verdicts = "|".join(verdict.replace("_", " ") for verdict in TRIAGE_ORDER)
        expect(boss.locator("#cap-ann-items")).to_contain_text("Tom has 5 apples", timeout=WAIT_MS)
        table = boss.locator("#cap-ann-items")
        expect(table).to_contain_text("A box holds 6 eggs", timeout=WAIT_MS)
        shown = table.inner_text()
        assert len(re.findall(rf"\b({verdicts})\b", shown)) == 2, shown  # each item's verdict
        # the annotator's page opened before the job began and follows it too (its timer ticks slowly)
        expect(ann_line).to_contain_text("Refine all is done: 2 / 2 items refined", timeout=WAIT_MS)
        # and the item it shows, unrefined when opened, is shown with its refinement without moving
        expect(ann.locator("#cap-ann-status")).to_contain_text("A refinement arrived", timeout=WAIT_MS)
        expect(ann.locator("#cap-ann-verdict")).not_to_contain_text("No refinement yet", timeout=WAIT_MS)
        boss_browser.close()
        ann_browser.close()
    with Store(served.db_path)._connect() as conn:
        sources = conn.execute(
            "SELECT r.source FROM refinements r JOIN items i ON i.id = r.item_id JOIN batches b ON b.id = i.batch_id"
            " WHERE b.name = 'two-drafts.jsonl'"
        ).fetchall()
    assert [row[0] for row in sources] == ["batch", "batch"]
