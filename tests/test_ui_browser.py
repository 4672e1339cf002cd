"""The UI in Debian's Chromium against a real hub: live events without losing scroll or
selection, infinite scroll, filters in the URL with counts, a dashboard that matches the API,
alert strings shown as text under a strict CSP, triage to a tested exception, re-drive."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from sidekick.alert import format_time_ns
from tests.browser import VIEWPORT, Watch, chromium, screenshot, timed
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Reply
from tests.ui_support import RULES, SHELL_RULE, detector_alerts, fired, uuid_of, write_recording

RULE_NAMES = ["Terminal shell in container", "Write below etc", "Read sensitive file untrusted"]
PRIORITIES = ["Notice", "Warning", "Error", "Critical"]
XSS = '<img src=x onerror="window.__xss=1;alert(1)"><script>window.__xss=2;alert(2)</script>'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def rx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, rx: Receiver) -> Iterator[HubProcess]:
    config = {"webhook": {"address": rx.url, "maxattempts": 1}}
    with HubProcess(tmp_path_factory.mktemp("ui"), config) as proc:
        yield proc


@pytest.fixture
def context(browser: Browser, hub: HubProcess) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=VIEWPORT)
    yield context
    context.close()


def open_ui(context: BrowserContext, hub: HubProcess, query: str = "") -> tuple[Page, Watch]:
    """Opens the URL the hub prints (with the token) once; afterwards the cookie suffices."""
    watch = Watch()
    page = watch.attach(context.new_page())
    response = page.goto(f"{hub.base_url}/ui/?token={hub.token}{'&' + query if query else ''}")
    assert response is not None and response.ok
    assert "token=" not in page.url  # the redirect took it out of the address bar
    expect(page.locator("body")).to_have_attribute("data-loaded", re.compile(r"\d+"))
    return page, watch


def post(hub: HubProcess, alerts: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=hub.base_url) as client:
        for alert in alerts:
            assert client.post("/", json=alert).status_code == 200


def corpus(first: int, count: int, start_ns: int, step_s: float = 1.0,
           needle: int | None = None) -> list[dict[str, Any]]:
    alerts = []
    for n in range(first, first + count):
        fields = {**falco_alert(n)["output_fields"], "container.name": f"app-{n % 3}",
                  "k8s.ns.name": ["shop", "ci"][n % 2]}
        alerts.append(falco_alert(
            n, rule=RULE_NAMES[n % 3], priority=PRIORITIES[n % 4], hostname=f"node-{n % 2}",
            time=format_time_ns(start_ns + int((n - first) * step_s * 1e9)),
            output=f"event number {n}{' needle' if n == needle else ''}",
            output_fields=fields))
    return alerts


def api(hub: HubProcess, path: str, **params: Any) -> Any:
    return httpx.get(f"{hub.url}{path}", params=params).json()


def test_live_events_infinite_scroll_keep_scroll_and_selection(
    context: BrowserContext, hub: HubProcess
) -> None:
    post(hub, corpus(0, 150, time.time_ns() - 3600 * 10**9, step_s=10))
    started = time.monotonic()
    page, watch = open_ui(context, hub)
    timed("first page of 150 stored events rendered", started)
    rows = page.locator("#event-rows tr")
    expect(rows).to_have_count(100)  # the first page
    expect(page.locator("#live")).to_have_text("live")
    page.locator("#sentinel").scroll_into_view_if_needed()
    expect(rows).to_have_count(150)  # the next page, by cursor
    expect(page.locator("#sentinel")).to_have_text("end of the stored events")
    expect(page.locator("#match-count")).to_have_text("150 events match")

    # Select a row halfway down and leave it where the operator is looking.
    target = rows.nth(60)
    uuid = target.get_attribute("data-uuid")
    target.click()
    expect(page.locator("#detail .detail-rule")).to_be_visible()
    assert parse_qs(urlsplit(page.url).query)["event"] == [uuid]
    target.scroll_into_view_if_needed()
    before = target.bounding_box()
    assert before is not None
    post(hub, corpus(1000, 3, time.time_ns()))
    expect(rows).to_have_count(153)
    expect(page.locator("#new-above")).to_have_text("3 new events above")
    after = page.locator(f'#event-rows tr[data-uuid="{uuid}"]')
    expect(after).to_have_class(re.compile("selected"))
    box = after.bounding_box()
    assert box is not None and abs(box["y"] - before["y"]) <= 1, (before, box)
    assert page.locator("#detail").is_visible()
    expect(page.locator("#match-count")).to_have_text("153 events match")

    # Back at the top, a new alert shows up first, live, without a reload.
    page.locator("#new-above").click()
    post(hub, corpus(2000, 1, time.time_ns()))
    expect(rows).to_have_count(154)
    expect(rows.first).to_have_attribute("data-uuid", falco_alert(2000)["uuid"])
    screenshot(page, "events")
    assert watch.errors == [] and watch.dialogs == []


def test_filters_search_time_range_and_shared_urls(
    context: BrowserContext, hub: HubProcess
) -> None:
    now = time.time_ns()
    post(hub, corpus(3000, 30, now - 120 * 10**9, needle=3007))
    post(hub, [falco_alert(5000, time=format_time_ns(now - 3 * 3600 * 10**9), rule="Old rule")])
    page, watch = open_ui(context, hub)
    rows = page.locator("#event-rows tr")

    page.select_option("select[name=priority]", "error")
    expect(page).to_have_url(re.compile(r"priority=error"))
    expected = api(hub, "/api/v1/stats", priority="error", since="24h")["total"]
    expect(page.locator("#match-count")).to_have_text(f"{expected} events match")
    prios = set(page.locator("#event-rows .prio").all_inner_texts())
    assert prios <= {"Error", "Critical"} and prios

    page.fill("input[name=q]", "NEEDLE")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("event number 3007 needle")
    expect(page.locator("#match-count")).to_have_text("1 event match")

    page.click("#clear-filters")
    page.fill("input[name=rule]", "Old rule")
    page.click("#filters button[type=submit]")
    expect(rows).to_have_count(1)  # 3 h ago: inside the default last 24 h
    page.select_option("select[name=range]", "1h")
    expect(page.locator("#sentinel")).to_have_text("no stored event matches")
    expect(page).to_have_url(re.compile(r"since=1h"))
    page.select_option("select[name=range]", "")  # all stored
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(r"since=all"))

    page.click("#clear-filters")
    page.fill("input[name=namespace]", "ci")
    page.fill("input[name=hostname]", "node-1")
    page.click("#filters button[type=submit]")
    want = api(hub, "/api/v1/events", field="k8s.ns.name:ci", hostname="node-1", limit=1000)
    expect(rows).to_have_count(len(want["events"]))
    shared = page.url
    assert "field=k8s.ns.name%3Aci" in shared and "hostname=node-1" in shared

    # The same URL opened elsewhere shows the same view.
    other = Watch().attach(context.new_page())
    other.goto(shared)
    expect(other.locator("input[name=namespace]")).to_have_value("ci")
    expect(other.locator("input[name=hostname]")).to_have_value("node-1")
    expect(other.locator("#event-rows tr")).to_have_count(len(want["events"]))
    assert (other.locator("#event-rows tr").evaluate_all("rows => rows.map(r => r.dataset.uuid)")
            == [e["uuid"] for e in want["events"]])

    # A custom range, in UTC: no live feed for a range that ends in the past.
    page.click("#clear-filters")
    page.select_option("select[name=range]", "custom")
    since, until = now - 100 * 10**9, now - 60 * 10**9
    page.fill("input[name=since]", format_time_ns(since)[:19])
    page.fill("input[name=until]", format_time_ns(until)[:19])
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"since=\d{4}-.*Z&until=\d{4}-.*Z"))
    expect(page.locator("#live")).to_have_text("paused")
    window = api(hub, "/api/v1/events", since=format_time_ns(since)[:19] + "Z",
                 until=format_time_ns(until)[:19] + "Z", limit=1000)["events"]
    assert window  # corpus events one a second from now - 120 s
    expect(rows).to_have_count(len(window))
    # Whole minutes: the browser gives "12:05" for 12:05:00, which must still be a valid time.
    minute = 60 * 10**9
    since = (now - 150 * 10**9) // minute * minute  # before the corpus
    until = since + 2 * minute  # after it, and in the past
    page.fill("input[name=since]", format_time_ns(since)[:19])
    page.fill("input[name=until]", format_time_ns(until)[:19])
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"since=\d{4}-\d\d-\d\dT\d\d%3A\d\d%3A00Z&"))
    window = api(hub, "/api/v1/events", since=format_time_ns(since)[:19] + "Z",
                 until=format_time_ns(until)[:19] + "Z", limit=1000)["events"]
    assert len(window) >= 30  # the whole corpus
    expect(rows).to_have_count(len(window))
    page.click("#clear-filters")
    expect(page.locator("#live")).to_have_text("live")

    # A field of the detail becomes a filter too.
    rows.first.click()
    page.locator("#detail tr", has_text="user.name").get_by_role("button").click()
    chip = page.locator("#field-chips .chip")
    expect(chip).to_have_text("user.name:root \N{MULTIPLICATION SIGN}")
    expect(page).to_have_url(re.compile(r"field=user.name%3Aroot"))
    page.go_back()
    expect(chip).to_have_count(0)
    assert watch.errors == [] and watch.dialogs == []


def test_dashboard_counts_match_the_api(context: BrowserContext, hub: HubProcess) -> None:
    post(hub, corpus(4000, 40, time.time_ns() - 600 * 10**9, step_s=5))
    page, watch = open_ui(context, hub, "view=dashboard&source=syscall")
    expect(page.locator("#dash-total")).to_have_attribute("data-count", re.compile(r"\d+"))
    stats = api(hub, "/api/v1/stats", source="syscall", since="24h")
    assert page.locator("#dash-total").get_attribute("data-count") == str(stats["total"])
    shown = dict(page.locator("[data-count-key]").evaluate_all(
        "els => els.map(e => [e.dataset.countKey, Number(e.dataset.count)])"))
    for kind in ("priority", "rule", "hostname", "tag", "source"):
        top = sorted(stats[f"by_{kind}"].items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        assert {k: v for k, v in shown.items() if k.startswith(f"{kind}:")} == \
            {f"{kind}:{name}": n for name, n in top}, kind
    noisiest = page.locator("#dash-rule .label").all_inner_texts()
    assert noisiest == [name for name, _ in sorted(stats["by_rule"].items(),
                                                   key=lambda kv: (-kv[1], kv[0]))][:10]
    assert page.locator("#dash-chart rect").count() == len(stats["buckets"])
    screenshot(page, "dashboard")
    page.locator("#dash-rule button").first.click()  # the noisiest rule's events
    expect(page).to_have_url(re.compile(r"rule="))
    expect(page.locator("#view-events")).to_be_visible()
    assert watch.errors == [] and watch.dialogs == []


def test_alert_strings_are_text_and_the_csp_is_strict(
    context: BrowserContext, hub: HubProcess
) -> None:
    evil = falco_alert(
        9000, time=format_time_ns(time.time_ns()), rule=f"Rule {XSS}", hostname=XSS,
        output=f"shell ran {XSS}", tags=[XSS],
        output_fields={"proc.cmdline": XSS, XSS: "key", "proc.name": "<script>"})
    post(hub, [evil])
    watch = Watch()
    page = watch.attach(context.new_page())
    response = page.goto(f"{hub.base_url}/ui/?token={hub.token}&event={evil['uuid']}")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "require-trusted-types-for 'script'" in csp
    expect(page.locator("#detail .detail-output")).to_have_text(f"shell ran {XSS}")
    row = page.locator(f'#event-rows tr[data-uuid="{evil["uuid"]}"]')
    expect(row).to_contain_text(f"Rule {XSS}")
    expect(page.locator("#detail")).to_contain_text(XSS)  # field value, field name, tag
    expect(page.locator("#raw-json")).to_contain_text("onerror")
    time.sleep(0.5)  # an injected handler would have run by now
    assert page.locator("main img, main script, aside img").count() == 0
    assert page.evaluate("() => window.__xss") is None
    assert watch.dialogs == [] and watch.errors == []


def test_triage_false_positive_becomes_a_tested_exception(
    context: BrowserContext, hub: HubProcess, tmp_path
) -> None:
    recording = write_recording(tmp_path / "recorded.jsonl")
    post(hub, detector_alerts(recording))
    benign = uuid_of(1)
    page, watch = open_ui(context, hub, f"event={benign}&rule={SHELL_RULE.replace(' ', '+')}")
    expect(page.locator("#detail .detail-rule")).to_have_text(SHELL_RULE)
    page.fill("#actor", "ana")
    page.locator("#actor").dispatch_event("change")
    page.click("#detail button[data-triage=false_positive]")
    dialog = page.locator("#triage-dialog")
    expect(dialog).to_be_visible()
    dialog.locator("input[data-field='proc.name']").check()
    dialog.locator("input[data-field='container.image.repository']").check()
    expect(page.locator("#exception-silenced")).to_have_attribute("data-count", "2")
    yaml_text = page.locator("#exception-yaml").inner_text()
    assert f"rule: {SHELL_RULE}" in yaml_text and "ghcr.io/acme/ci-runner" in yaml_text
    dialog.locator("input[name=scope][value=like]").check()
    expect(page.locator("#triage-like-count")).to_have_text("(2 events)")
    page.fill("#triage-note", "the CI runner's own shells")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1180})  # the whole dialog
    screenshot(page, "triage")
    page.click("#exception-save")
    expect(page.locator("#exception-saved")).to_have_text(
        re.compile(r"^Saved in the hub \(version 1\)\. A copy is in /.+\.yaml\.$"))
    rules_file = page.locator("#exception-saved").get_attribute("data-file")
    assert rules_file is not None
    page.click("#triage-submit")
    expect(dialog).to_be_hidden()
    expect(page.locator("#detail-triage")).to_have_text("false positive")
    for line, status in ((1, "false positive"), (3, "false positive"), (2, "new")):
        expect(page.locator(f'#event-rows tr[data-uuid="{uuid_of(line)}"] .triage')).to_have_text(
            status)
    page.select_option("select[name=triage]", "false_positive")
    expect(page.locator("#event-rows tr")).to_have_count(2)
    history = api(hub, f"/api/v1/events/{benign}/triage")["current"]
    assert (history["actor"], history["note"]) == ("ana", "the CI runner's own shells")
    # The detector loading the hub's file no longer fires on the benign events; the others of
    # the rule still do.
    assert fired([RULES], recording) == [1, 2, 3, 4]
    assert fired([RULES, Path(rules_file)], recording) == [2, 4]
    assert watch.errors == [] and watch.dialogs == []


def test_dead_letter_shown_and_redriven(context: BrowserContext, hub: HubProcess,
                                        rx: Receiver) -> None:
    rx.set_responder(lambda request: Reply(400))
    dead = falco_alert(7000, time=format_time_ns(time.time_ns()))
    post(hub, [dead])
    page, watch = open_ui(context, hub, f"event={dead['uuid']}")
    state = page.locator('#detail tr[data-output="webhook"]')
    deadline = time.monotonic() + 15
    while state.get_attribute("data-state") != "dead":
        assert time.monotonic() < deadline, state.inner_text()
        page.reload()
    expect(state).to_contain_text("webhook: HTTP 400")
    rx.set_responder(None)
    state.get_by_role("button", name="Re-drive").click()
    expect(page.locator("#toast")).to_have_text("Queued for webhook again")
    while state.get_attribute("data-state") != "delivered":
        assert time.monotonic() < deadline + 15, state.inner_text()
        page.reload()
    assert watch.errors == [] and watch.dialogs == []


def test_event_links_and_writes_without_credentials(browser: Browser, hub: HubProcess) -> None:
    """A link from an alert (``<publicurl>/ui/?event=<uuid>``) opened by someone not signed in
    asks for the token, then opens that event; no write goes through without credentials."""
    stranger = browser.new_context(viewport=VIEWPORT)
    uuid = falco_alert(1)["uuid"]
    url = f"{hub.base_url}/api/v1/events/{uuid}/triage"
    body = {"status": "resolved", "actor": "mallory"}
    assert stranger.request.post(url, data=body).status == 401
    page = stranger.new_page()
    page.goto(f"{hub.base_url}/ui/?event={uuid}")
    expect(page.locator("form input[name=token]")).to_be_visible()  # the sign-in page
    page.fill("input[name=token]", hub.token)
    page.click("form button[type=submit]")
    expect(page.locator("body")).to_have_attribute("data-loaded", re.compile(r"\d+"))
    expect(page.locator("#detail .mono")).to_have_text(uuid)
    # Signed in, the cookie alone is not enough: a forged request has no CSRF token.
    assert stranger.request.post(url, data=body).status == 403
    csrf = stranger.request.get(f"{hub.base_url}/api/v1/session").json()["csrf"]
    assert stranger.request.post(url, data=body, headers={"x-csrf-token": csrf}).status == 200
    stranger.close()
