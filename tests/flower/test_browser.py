"""A person's view: headless Chromium on the real Flower (basic auth), over runs a real
worker made. It sends an event to a waiting run and replays a failed one from their trace
pages, and checks that the pages show the new state. Screenshots go to docs/images/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import IN_CI
from tests.flower.conftest import PASSWORD, USER, FlowerServer, run_status, task, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.flower]

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def chromium_path() -> str:
    found = os.environ.get("DURABLE_TEST_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def browser_page(flower: FlowerServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                base_url=flower.base, viewport={"width": 1360, "height": 900},
                http_credentials={"username": USER, "password": PASSWORD})
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def status_badge(page: Any) -> str:
    return str(page.locator("#durable-run-status").inner_text()).strip()


def reload_until_status(page: Any, wanted: str) -> None:
    def shown() -> bool:
        page.reload()
        return status_badge(page) == wanted

    wait_for(f"the trace page to show {wanted}", shown, timeout=20)


def test_runs_list_and_trace_in_a_browser(browser_page: Any, flower_worker: Any,
                                          flower_app: Any) -> None:
    page = browser_page
    m = flower_app
    done = task(m, "checkout").delay("b-1").id
    failing = task(m, "flaky").delay("b-2").id
    waiting = task(m, "approval").apply_async(("b-3",), idempotency_key="approve-b-3").id
    for run_id, status in ((done, "completed"), (failing, "failed"), (waiting, "suspended")):
        wait_for(f"run {run_id} to be {status}",
                 lambda r=run_id, s=status: run_status(m, r) == s)

    # The runs list: every run with its status badge, reached from Flower's navbar.
    page.goto("/workers")
    page.get_by_role("link", name="Runs", exact=True).click()
    page.wait_for_selector("#durable-runs-table")
    for run_id, status in ((done, "completed"), (failing, "failed"), (waiting, "suspended")):
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        assert row.locator(".durable-status").inner_text().strip() == status
    page.screenshot(path=str(IMAGES / "runs-list.png"))

    # Auto-refresh: a run started after the page loaded appears without any click.
    late = task(m, "checkout").delay("b-late").id
    page.wait_for_selector(f'tr[data-run-id="{late}"]', timeout=20_000)

    # A long step output is cut, with "show more"; secrets are redacted.
    page.goto(f"/durable/runs/{done}")
    page.locator('.durable-step[data-step="fetch_order"] a').click()
    # Bootstrap's collapse animates: wait until the step's details are fully open.
    page.locator("#durable-step-0.collapse.show").wait_for(state="visible")
    value = page.locator("#durable-step-0 .durable-step-output .durable-value")
    value.locator(".durable-more").click()
    value.locator(".durable-full").wait_for(state="visible", timeout=5_000)
    value.locator(".durable-preview").wait_for(state="hidden", timeout=5_000)
    assert "x" * 900 in value.locator(".durable-full").inner_text()
    assert "[redacted]" in value.locator(".durable-full").inner_text()
    assert "SECRET" not in page.locator("body").inner_text()

    # The waiting run: send its event from the trace page; the page shows it completed.
    page.goto("/durable/runs")
    page.locator(f'tr[data-run-id="{waiting}"] a').first.click()
    page.wait_for_selector("#durable-current-wait")
    assert status_badge(page) == "suspended"
    assert not page.locator("#durable-autorefresh").is_checked()  # off on trace pages
    assert page.locator("#durable-event-key").input_value() == "approve:b-3"
    page.fill("#durable-event-payload", '{"approved": true, "by": "ops"}')
    page.click("#durable-send-event")
    page.wait_for_selector("#durable-notice")
    assert waiting in page.locator("#durable-notice").inner_text()
    reload_until_status(page, "completed")
    assert '"by": "ops"' in page.locator("body").inner_text()

    # The failed run: fix the partner, replay; the trace shows the second attempt succeed.
    page.goto(f"/durable/runs/{failing}")
    assert status_badge(page) == "failed"
    assert page.locator('.durable-step[data-step="call_partner"]').get_attribute(
        "data-state") == "failed"
    redis.Redis.from_url(f"{m.BASE_URL}/10").set(f"{m.FIXED_KEY}:b-2", 1)
    page.click("#durable-replay")
    page.wait_for_selector("#durable-notice")
    assert "replayed" in page.locator("#durable-notice").inner_text()
    reload_until_status(page, "completed")
    assert page.locator('.durable-step[data-step="call_partner"]').get_attribute(
        "data-state") == "committed"
    assert page.locator("#durable-attempts tbody tr").count() == 2
    # The worker captured what the step logged, in both attempts.
    logs = page.locator("#durable-logs").inner_text()
    assert logs.count("partner down for b-2, will retry") == 2
    assert "partner accepted b-2" in logs and "shop.partner" in logs
    page.locator('.durable-step[data-step="call_partner"] a').click()
    page.wait_for_selector("#durable-waterfall .collapse.show")
    page.screenshot(path=str(IMAGES / "run-trace.png"), full_page=True)


def test_hostile_text_never_runs_as_script(browser_page: Any, flower_worker: Any,
                                           flower_app: Any) -> None:
    page = browser_page
    run_id = task(flower_app, "hostile").delay("<script>window.__xss_payload=1</script>").id
    wait_for("the hostile run", lambda: run_status(flower_app, run_id) == "completed")
    for path in (f"/durable/runs/{run_id}", "/durable/runs"):
        page.goto(path)
        assert page.evaluate("typeof window.__xss_step") == "undefined"
        assert page.evaluate("typeof window.__xss_payload") == "undefined"
    page.goto(f"/durable/runs/{run_id}")
    assert "<script>window.__xss_step=1</script>" in page.locator(
        "#durable-waterfall").inner_text()
