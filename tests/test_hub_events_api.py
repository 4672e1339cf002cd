"""The recent-events API and retention, against running hubs on both stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sidekick.alert import format_time_ns, parse_time_ns
from tests.hubproc import HubProcess, falco_alert

BASE_NS = parse_time_ns("2026-11-29T10:00:00Z")
RULES = ["Terminal shell in container", "Write below etc", "Read sensitive file untrusted"]
PRIORITIES = ["Notice", "Warning", "Error", "Critical"]


def corpus() -> list[dict]:
    alerts = []
    for n in range(120):
        alerts.append(falco_alert(
            n,
            rule=RULES[n % 3],
            priority=PRIORITIES[n % 4],
            hostname=f"node-{n % 2}",
            source="k8s_audit" if n % 10 == 0 else "syscall",
            tags=["shell"] if n % 3 == 0 else ["filesystem", "mitre_persistence"],
            time=format_time_ns(BASE_NS + n * 60 * 10**9),  # one a minute
            output=f"event number {n} {'needle' if n == 77 else ''}",
        ))
    return alerts


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[HubProcess]:
    config: dict = {"store": request.param}
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
        config["redis"] = {"url": server.url}
    with HubProcess(tmp_path_factory.mktemp("events"), config) as proc, httpx.Client() as client:
        for alert in corpus():
            assert client.post(f"{proc.url}/", json=alert).status_code == 200
        yield proc


def events(hub: HubProcess, **params: object) -> list[dict]:
    """Every page, following the cursor."""
    found: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{hub.url}/api/v1/events", params=query).json()
        found += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def numbers(found: list[dict]) -> list[int]:
    return [e["output_fields"]["n"] for e in found]


def test_pagination_newest_first_without_gaps(hub: HubProcess) -> None:
    assert numbers(events(hub, limit=7)) == list(range(119, -1, -1))


def test_filters(hub: HubProcess) -> None:
    assert numbers(events(hub, rule=RULES[1])) == [n for n in range(119, -1, -1) if n % 3 == 1]
    both = numbers(events(hub, rule=f"{RULES[0]},{RULES[1]}", limit=5))
    assert both == [n for n in range(119, -1, -1) if n % 3 != 2]
    assert numbers(events(hub, priority="error")) == [
        n for n in range(119, -1, -1) if n % 4 >= 2]
    assert numbers(events(hub, hostname="node-1", source="k8s_audit")) == []
    assert numbers(events(hub, source="k8s_audit")) == list(range(110, -1, -10))
    assert numbers(events(hub, tag="shell")) == [n for n in range(119, -1, -1) if n % 3 == 0]
    assert numbers(events(hub, q="NEEDLE")) == [77]
    since = format_time_ns(BASE_NS + 100 * 60 * 10**9)
    until = format_time_ns(BASE_NS + 105 * 60 * 10**9)
    assert numbers(events(hub, since=since, until=until)) == [104, 103, 102, 101, 100]


def test_stats(hub: HubProcess) -> None:
    params = {"since": format_time_ns(BASE_NS), "until": format_time_ns(BASE_NS + 7200 * 10**9),
              "bucket": "30m"}
    stats = httpx.get(f"{hub.url}/api/v1/stats", params=params).json()
    assert stats["total"] == 120
    assert stats["by_priority"] == {p: 30 for p in PRIORITIES}
    assert stats["by_rule"] == {r: 40 for r in RULES}
    assert stats["by_hostname"] == {"node-0": 60, "node-1": 60}
    assert stats["by_source"] == {"syscall": 108, "k8s_audit": 12}
    assert stats["by_tag"] == {"shell": 40, "filesystem": 80, "mitre_persistence": 80}
    assert [b["count"] for b in stats["buckets"]] == [30, 30, 30, 30]
    assert stats["buckets"][0]["start"] == BASE_NS
    filtered = httpx.get(f"{hub.url}/api/v1/stats", params={**params, "rule": RULES[0]}).json()
    assert filtered["total"] == 40 and filtered["by_rule"] == {RULES[0]: 40}


@pytest.mark.parametrize(
    ("params", "field"),
    [({"priority": "loud"}, "priority"), ({"since": "yesterday"}, "since"),
     ({"cursor": "!!!"}, "cursor"), ({"limit": 0}, "limit"), ({"limit": 5000}, "limit")],
)
def test_bad_queries_are_400(hub: HubProcess, params: dict, field: str) -> None:
    response = httpx.get(f"{hub.url}/api/v1/events", params=params)
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_too_many_buckets_is_400(hub: HubProcess) -> None:
    response = httpx.get(f"{hub.url}/api/v1/stats", params={"since": "30d", "bucket": "1s"})
    assert response.status_code == 400
    assert response.json()["field"] == "bucket"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_retention_by_count_and_age(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    config: dict = {"store": store, "retention": {"maxcount": 50, "maxage": "1d",
                                                  "interval": "200ms"}}
    if store == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis_url")}
    now = time.time_ns()
    with HubProcess(tmp_path, config) as hub, httpx.Client() as client:
        old = falco_alert(1000, time=format_time_ns(now - 2 * 86400 * 10**9))
        client.post(f"{hub.url}/", json=old)
        for n in range(80):
            client.post(f"{hub.url}/", json=falco_alert(n, time=format_time_ns(now + n)))
        deadline = time.monotonic() + 10
        while len(found := events(hub, limit=1000)) != 50:
            assert time.monotonic() < deadline, f"{len(found)} events kept"
            time.sleep(0.1)
        assert numbers(found) == list(range(79, 29, -1))  # the newest 50; the old one gone
