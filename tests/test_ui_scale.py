"""A million stored events (SQLite): the UI's first page and a filtered query in Chromium.

The times are logged (pytest -s, and artifacts/ui/scale.txt), not asserted: a loaded 2-core
machine must not make the test flaky. bench/ui.py reports the API's own percentiles.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser import ARTIFACTS, VIEWPORT, Watch, chromium, screenshot
from tests.hubproc import HubProcess
from tests.ui_support import fill_sqlite

COUNT = 1_000_000


@pytest.fixture(scope="module")
def big_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    workdir = tmp_path_factory.mktemp("scale")
    seconds = fill_sqlite(workdir / "hub-data" / "lanner.db", COUNT)
    print(f"stored {COUNT:,} events through the store in {seconds:.1f} s")
    with HubProcess(workdir, {}) as hub:
        yield hub


def log(lines: list[str]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "scale.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


@pytest.mark.timeout(600)
def test_a_million_events_first_page_and_filtered_query(big_hub: HubProcess) -> None:
    api = httpx.Client(base_url=big_hub.url, timeout=60)
    newest = api.get("/api/v1/events", params={"limit": 1}).json()["events"][0]
    assert newest["uuid"] == f"b16e0000-0000-4000-8000-{COUNT - 1:012d}"
    filtered = {"rule": "Rule 07", "priority": "error", "field": "k8s.ns.name:ns-7"}
    want = api.get("/api/v1/events", params={**filtered, "limit": 100}).json()["events"]
    assert len(want) == 100
    lines = [f"{COUNT:,} events stored (SQLite)"]
    with chromium() as browser:
        watch = Watch()
        page = watch.attach(browser.new_context(viewport=VIEWPORT).new_page())
        started = time.monotonic()
        page.goto(f"{big_hub.base_url}/ui/?token={big_hub.token}")
        rows = page.locator("#event-rows tr")
        expect(rows).to_have_count(100, timeout=30_000)
        first_ms = (time.monotonic() - started) * 1000
        expect(rows.first).to_have_attribute("data-uuid", newest["uuid"])
        lines.append(f"first page: on screen {first_ms:.0f} ms after navigation "
                     f"(page load, session, events API, rendering); the events fetch and "
                     f"render alone {page.locator('body').get_attribute('data-first-page-ms')} ms")

        query = "&".join(f"{k}={v}" for k, v in filtered.items()).replace(" ", "+")
        started = time.monotonic()
        page.goto(f"{big_hub.base_url}/ui/?{query}")
        expect(rows.first).to_have_attribute("data-uuid", want[0]["uuid"], timeout=30_000)
        expect(rows).to_have_count(100)
        filtered_ms = (time.monotonic() - started) * 1000
        lines.append(f"filtered (rule, priority >= error, namespace): on screen "
                     f"{filtered_ms:.0f} ms after navigation; fetch and render "
                     f"{page.locator('body').get_attribute('data-first-page-ms')} ms")

        page.click("#clear-filters")
        expect(rows).to_have_count(100, timeout=30_000)
        started = time.monotonic()
        page.fill("input[name=q]", "app-42")
        page.click("#filters button[type=submit]")
        expect(rows.first).to_contain_text("app-42", timeout=30_000)
        lines.append(f"then a text search from the form: {(time.monotonic() - started) * 1000:.0f}"
                     " ms to the first rows")
        expect(page.locator("#match-count")).to_have_text(re.compile(r"events? match"),
                                                          timeout=60_000)
        screenshot(page, "events-1m")
        assert watch.errors == [] and watch.dialogs == []
    log(lines)

