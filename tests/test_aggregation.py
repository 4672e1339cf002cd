"""Alert fatigue control: per output, repeats within a window become one summary.

The store contract runs on both backends; the acceptance runs real hub processes (SQLite, and
Redis with two replicas) delivering to a recording Slack receiver, asserting exact payloads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidekick.aggregation import Aggregation, Window
from sidekick.alert import TEST_RULE, Alert, Priority, format_time_ns, parse_time_ns
from sidekick.config import ConfigError, load_config
from sidekick.store.base import EventQuery, Store
from tests.grpc_client import HubClient
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Request
from tests.test_hub_delivery import post_all

S = 1_000_000_000
EVENT_NS = 1_700_000_000 * S
WINDOW_NS = S // 2  # short windows keep the store tests fast


# --- the store contract, on both backends ---------------------------------------------------


def make_alert(n: int, rule: str = "Rule A", **fields: Any) -> Alert:
    return Alert(
        rule=rule,
        priority=Priority.ERROR,
        time_ns=EVENT_NS + n,
        output_fields={"proc.name": "sh", **fields},
        output=f"{rule} happened",
        source="syscall",
        tags=["shell"],
        hostname=f"node-{n % 3}",
        uuid=f"00000000-0000-4000-8000-{n:012d}",
    )


SLACK = {"slack": Aggregation(WINDOW_NS)}


async def summaries(store: Store, output: str = "slack") -> list[Alert]:
    """Wait for the open windows to end, flush them, and lease what that queued."""
    await asyncio.sleep(WINDOW_NS / S + 0.05)
    await store.flush_windows(1000)
    return [d.alert for d in await store.lease(output, 1000, 30, 0)]


async def test_first_goes_out_repeats_are_counted_then_one_summary(store: Store) -> None:
    alerts = [make_alert(n) for n in range(10)]
    ingested = await store.ingest([(a, ["slack", "webhook"]) for a in alerts], 600, SLACK)
    assert ingested.fresh == [True] * 10
    assert ingested.aggregated == {"slack": 9}
    ingested = await store.ingest([(make_alert(10), ["slack", "webhook"])], 600, SLACK)
    assert ingested.aggregated == {"slack": 1}
    assert [d.alert for d in await store.lease("slack", 100, 30, 0)] == [alerts[0]]
    assert len(await store.lease("webhook", 100, 30, 0)) == 11  # not aggregating: all of them
    assert await store.flush_windows(1000) == (0, {})  # the window is still open
    assert len((await store.events(EventQuery(limit=100))).events) == 11  # every one stored

    (summary,) = await summaries(store)
    key = SLACK["slack"].key(alerts[0])
    assert key is not None
    start = summary.time_ns - WINDOW_NS
    window = Window("slack", key, start, summary.time_ns, 10, 0, 0, alerts[0], ())
    assert summary.to_dict() == {
        "uuid": window.summary_uuid(),
        "output": "10 more alerts of rule Rule A in the last 0.5s",
        "priority": "Error",
        "rule": "Rule A",
        "time": format_time_ns(summary.time_ns),
        "output_fields": {
            "lanner.aggregated_count": 10,
            "lanner.aggregated_first": format_time_ns(EVENT_NS + 1),
            "lanner.aggregated_last": format_time_ns(EVENT_NS + 10),
            "lanner.aggregate_window": "0.5s",
            "lanner.aggregate_opener": alerts[0].uuid,
        },
        "source": "syscall",
        "tags": ["shell"],
        "hostname": "",
    }
    assert uuid.UUID(summary.uuid).version == 5
    assert await store.flush_windows(1000) == (0, {})  # closed once


async def test_a_window_without_repeats_ends_silently_and_the_next_alert_opens_one(
    store: Store,
) -> None:
    await store.ingest([(make_alert(0), ["slack"])], 600, SLACK)
    await asyncio.sleep(WINDOW_NS / S + 0.05)
    assert await store.flush_windows(1000) == (1, {})
    assert (await store.ingest([(make_alert(1), ["slack"])], 600, SLACK)).aggregated == {}
    # The previous window ended but was not flushed yet: the next alert still opens a new one.
    await asyncio.sleep(WINDOW_NS / S + 0.05)
    second = await store.ingest([(make_alert(n), ["slack"]) for n in (2, 3)], 600, SLACK)
    assert second.aggregated == {"slack": 1}
    leased = [d.alert.uuid for d in await store.lease("slack", 10, 30, 0)]
    assert leased == [make_alert(n).uuid for n in (0, 1, 2)]
    (summary,) = await summaries(store)
    assert summary.output_fields["lanner.aggregated_count"] == 1
    assert summary.output_fields["lanner.aggregate_opener"] == make_alert(2).uuid


async def test_chosen_fields_split_groups(store: Store) -> None:
    by_proc = {"slack": Aggregation(WINDOW_NS, ("proc.name", "user.name"))}
    batch = [make_alert(n, **{"proc.name": ["bash", "sh"][n % 2]}) for n in range(8)]
    batch += [make_alert(8, **{"proc.name": "sh", "user.name": "root"})]
    batch += [make_alert(9, rule="Rule B")]
    ingested = await store.ingest([(a, ["slack"]) for a in batch], 600, by_proc)
    assert ingested.aggregated == {"slack": 6}
    opened = [d.alert.uuid for d in await store.lease("slack", 10, 30, 0)]
    assert opened == [batch[n].uuid for n in (0, 1, 8, 9)]
    found = {a.output: a.output_fields for a in await summaries(store)}
    assert set(found) == {
        "3 more alerts of rule Rule A (proc.name=bash, user.name=<NA>) in the last 0.5s",
        "3 more alerts of rule Rule A (proc.name=sh, user.name=<NA>) in the last 0.5s",
    }
    assert all(f["user.name"] is None and f["lanner.aggregated_count"] == 3
               for f in found.values())


async def test_duplicates_and_the_test_alert_are_not_counted(store: Store) -> None:
    first = make_alert(0)
    test = make_alert(1, rule=TEST_RULE)
    ingested = await store.ingest(
        [(first, ["slack"]), (first, ["slack"]), (test, ["slack"]), (test, ["slack"])], 600, SLACK
    )
    assert ingested.fresh == [True, False, True, False]
    assert ingested.aggregated == {}
    assert (await store.ingest([(first, ["slack"])], 600, SLACK)).aggregated == {}
    assert len(await store.lease("slack", 10, 30, 0)) == 2
    assert await summaries(store) == []


async def test_windows_survive_a_restart(store_factory: Callable[..., Store]) -> None:
    before = store_factory("a")
    await before.open()
    try:
        await before.ingest([(make_alert(n), ["slack"]) for n in range(5)], 600, SLACK)
    finally:
        await before.close()
    after = store_factory("a")
    await after.open()
    try:
        queued = await summaries(after)
        assert [a.output_fields.get("lanner.aggregated_count") for a in queued] == [None, 4]
    finally:
        await after.close()


async def test_replicas_share_windows(store_factory: Callable[..., Store], store: Store) -> None:
    """Two replicas on Redis at once (an SQLite file has one hub: concurrent calls to it): one
    opener, one summary, the exact count."""
    from sidekick.store.sqlite import SqliteStore

    other = store if isinstance(store, SqliteStore) else store_factory("b")
    await other.open()
    try:
        alerts = [make_alert(n) for n in range(200)]
        results = await asyncio.gather(*(
            (store, other)[n % 2].ingest([(alerts[n], ["slack"])], 600, SLACK) for n in range(200)
        ))
        assert sum(r.aggregated.get("slack", 0) for r in results) == 199
        opened = await store.lease("slack", 300, 30, 0)
        assert len(opened) == 1
        await store.complete(opened)
        await asyncio.sleep(WINDOW_NS / S + 0.05)
        flushed = await asyncio.gather(*(s.flush_windows(1000) for s in (store, other) * 3))
        assert sum(closed for closed, _ in flushed) == 1
        (summary,) = [d.alert for d in await store.lease("slack", 300, 30, 0)]
        assert summary.output_fields["lanner.aggregated_count"] == 199
    finally:
        await other.close()


# --- configuration ----------------------------------------------------------------------------


def test_config_keys_from_yaml_and_env(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "slack:\n  webhookurl: http://127.0.0.1:9/x\n  aggregatewindow: 5m\n"
        "  aggregatefields: proc.name, k8s.ns.name\n"
        "webhook:\n  address: http://127.0.0.1:9/y\n  aggregatefields: [proc.name]\n"
    )
    config = load_config(path, env={})
    slack, webhook = config.outputs["slack"], config.outputs["webhook"]
    assert (slack.aggregatewindow, slack.aggregatefields) == (300, ["proc.name", "k8s.ns.name"])
    assert (webhook.aggregatewindow, webhook.aggregatefields) == (0, ["proc.name"])
    env = {"SLACK_AGGREGATEWINDOW": "10s", "SLACK_AGGREGATEFIELDS": "user.name,proc.name"}
    slack = load_config(path, env=env).outputs["slack"]
    assert (slack.aggregatewindow, slack.aggregatefields) == (10, ["user.name", "proc.name"])
    assert load_config(None, env={"WEBHOOK_ADDRESS": "http://h/"}).outputs[
        "webhook"].aggregatewindow == 0  # off unless asked for


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("slack:\n  webhookurl: http://x\n  aggregatewindow: soon\n", {},
         "config.yaml:3: slack.aggregatewindow: 'soon' is not a duration"),
        ("slack:\n  webhookurl: http://x\n  aggregatewindow: -5\n", {},
         "config.yaml:3: slack.aggregatewindow: Input should be greater than or equal to 0"),
        ("slack:\n  webhookurl: http://x\n  aggregatefields: [proc.name, '']\n", {},
         "config.yaml:3: slack.aggregatefields: '' is not an output field name"),
        ("slack:\n  webhookurl: http://x\n  aggregatefields: 'proc name'\n", {},
         "config.yaml:3: slack.aggregatefields: 'proc name' is not an output field name"),
        ("slack:\n  webhookurl: http://x\n  aggregatefields: {a: b}\n", {},
         "config.yaml:3: slack.aggregatefields: Input should be a valid list"),
        ("", {"WEBHOOK_ADDRESS": "http://x", "WEBHOOK_AGGREGATEWINDOW": "10 minutes"},
         "env WEBHOOK_AGGREGATEWINDOW: '10 minutes' is not a duration"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, env: dict, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert message in str(info.value)


def test_bad_value_from_the_command_line_is_one_line() -> None:
    env = {**os.environ, "SLACK_WEBHOOKURL": "http://127.0.0.1:9/x",
           "SLACK_AGGREGATEWINDOW": "often"}
    result = subprocess.run(
        [sys.executable, "-m", "sidekick.cli", "sidekick", "--check"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "lanner: configuration error: env SLACK_AGGREGATEWINDOW: 'often' is not a duration "
        "such as 30s, 10m or 7d\n"
    )


# --- real hubs, Slack's receiver --------------------------------------------------------------

TOKEN = "T0KEN-in-the-slack-url-aggregation"
RULE = "Terminal shell in container"
OUTPUT = "10:00:00.123456789: Warning Shell spawned (user=root proc=bash n=0)"
FIRST_UUID = "00000000-0000-4000-8000-000000000000"
EVENT_TIME = "2026-11-29T10:00:00.123456789Z"


def repeat(n: int, **fields: Any) -> dict[str, Any]:
    """Falco's alert 0 again under uuid n: repeats differ in nothing else (but ``fields``)."""
    alert = falco_alert(0, uuid=f"00000000-0000-4000-8000-{n:012d}")
    alert["output_fields"].update(fields)
    return alert


def hub_config(receiver: Receiver, store: str, redis_url: str = "", **slack: Any) -> dict:
    config: dict[str, Any] = {
        "store": store,
        "slack": {"webhookurl": f"{receiver.url}/services/{TOKEN}", **slack},
        "webhook": {"address": f"{receiver.url}/hook", "maxconcurrentrequests": 4},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s", "leasemargin": "2s"},
    }
    if redis_url:
        config["redis"] = {"url": redis_url}
    return config


def publish(hubs: list[HubProcess], alerts: list[dict[str, Any]], batch: int = 100) -> float:
    """Publish over gRPC, as the detector does, spread over ``hubs``; the seconds it took."""

    async def one(hub: HubProcess, mine: list[dict[str, Any]]) -> int:
        async with HubClient(f"127.0.0.1:{hub.grpcport}") as client:
            batches = [[Alert.from_dict(a) for a in mine[i : i + batch]]
                       for i in range(0, len(mine), batch)]
            return sum(ack.accepted for ack in await client.publish(batches))

    async def run() -> int:
        shares = [alerts[i :: len(hubs)] for i in range(len(hubs))]
        return sum(await asyncio.gather(*(one(h, s) for h, s in zip(hubs, shares, strict=True))))

    started = time.monotonic()
    assert asyncio.run(run()) == len(alerts)
    return time.monotonic() - started


def slack_bodies(receiver: Receiver) -> list[Any]:
    return [r.json for r in receiver.requests if r.path == f"/services/{TOKEN}"]


def hooks(receiver: Receiver) -> list[Request]:
    return [r for r in receiver.requests if r.path == "/hook"]


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def field(title: str, value: str, short: bool = True) -> dict[str, Any]:
    return {"title": title, "value": value, "short": short}


def first_payload(proc: str = "bash") -> dict[str, Any]:
    """Slack's message for ``repeat(n, **{"proc.name": proc})``."""
    return {
        "username": "Lanner",
        "attachments": [{
            "fallback": OUTPUT,
            "color": "#ffc700",
            "text": OUTPUT,
            "fields": [
                field("rule", RULE), field("priority", "Warning"), field("source", "syscall"),
                field("hostname", "node-1"), field("tags", "container, mitre_execution, shell"),
                field("container.id", "abcdef123456"), field("evt.time", "1795946400123456789"),
                field("fd.name", "&lt;NA&gt;"), field("k8s.ns.name", "default"), field("n", "0"),
                field("proc.name", proc), field("proc.pid", "4242"), field("user.name", "root"),
                field("time", "2026-11-29 10:00:00.123456789 +0000 UTC", short=False),
            ],
            "footer": "Lanner",
        }],
    }


def summary_payload(
    got: dict[str, Any], count: int, window: str, opener: str, proc: str | None = None
) -> dict[str, Any]:
    """Slack's message for a summary. Its time is the window's end, which only the hub knows:
    it is taken from ``got`` and checked by the caller."""
    split = f" (proc.name={proc})" if proc else ""
    text = f"{count} more alerts of rule {RULE}{split} in the last {window}"
    return {
        "username": "Lanner",
        "attachments": [{
            "fallback": text,
            "color": "#ffc700",
            "text": text,
            "fields": [
                field("rule", RULE), field("priority", "Warning"), field("source", "syscall"),
                field("tags", "container, mitre_execution, shell"),
                field("lanner.aggregate_opener", opener, short=False),
                field("lanner.aggregate_window", window),
                field("lanner.aggregated_count", str(count)),
                field("lanner.aggregated_first", EVENT_TIME),
                field("lanner.aggregated_last", EVENT_TIME),
                *([field("proc.name", proc)] if proc else []),
                field("time", got["attachments"][0]["fields"][-1]["value"], short=False),
            ],
            "footer": "Lanner",
        }],
    }


def summary_time_ns(payload: dict[str, Any]) -> int:
    text = payload["attachments"][0]["fields"][-1]["value"]  # 2026-11-29 10:00:02.5 +0000 UTC
    day, clock = text.removesuffix(" +0000 UTC").split(" ")
    return parse_time_ns(f"{day}T{clock}Z")


def stored_events(hub: HubProcess) -> int:
    params = {"since": "2026-11-29T09:00:00Z", "until": "2026-11-29T11:00:00Z"}
    return httpx.get(f"{hub.url}/api/v1/stats", params=params).json()["total"]


def aggregated_metric(hub: HubProcess) -> str:
    lines = httpx.get(f"{hub.url}/metrics").text.splitlines()
    return next(line for line in lines if line.startswith("lanner_aggregated_alerts_total{"))


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(store, redis url) of a hub."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_url")
    return "sqlite", ""


def test_1000_identical_alerts_reach_slack_as_one_alert_and_one_summary(
    tmp_path: Path, receiver: Receiver, backend: tuple[str, str]
) -> None:
    config = hub_config(receiver, *backend, aggregatewindow="2s")
    with HubProcess(tmp_path, config, grpc=True) as hub:
        before = time.time_ns()
        took = publish([hub], [repeat(n) for n in range(1000)])
        assert took < 2, f"publishing took {took:.1f}s, longer than the window"
        wait_until(lambda: len(slack_bodies(receiver)) >= 2, 10, "the summary")
        time.sleep(1.0)  # nothing more comes
        first, summary = slack_bodies(receiver)
        assert first == first_payload()
        assert summary == summary_payload(summary, 999, "2s", FIRST_UUID)
        assert before + 2 * S <= summary_time_ns(summary) <= time.time_ns()
        wait_until(lambda: len(hooks(receiver)) >= 1000, 30, "the webhook's deliveries")
        assert len({r.json["uuid"] for r in hooks(receiver)}) == 1000  # not aggregating
        assert stored_events(hub) == 1000
        assert aggregated_metric(hub) == 'lanner_aggregated_alerts_total{destination="slack"} 999.0'


def test_each_value_of_a_chosen_field_is_its_own_group(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = hub_config(receiver, "sqlite", aggregatewindow="2s", aggregatefields="proc.name")
    with HubProcess(tmp_path, config, grpc=True) as hub:
        alerts = [repeat(n, **{"proc.name": ["bash", "sh"][n % 2]}) for n in range(1000)]
        assert publish([hub], alerts) < 2
        wait_until(lambda: len(slack_bodies(receiver)) >= 4, 10, "two summaries")
        time.sleep(1.0)
        bodies = slack_bodies(receiver)
        assert bodies[:2] == [first_payload("bash"), first_payload("sh")]
        bash, sh = sorted(bodies[2:], key=lambda b: b["attachments"][0]["text"])
        assert bash == summary_payload(bash, 499, "2s", repeat(0)["uuid"], proc="bash")
        assert sh == summary_payload(sh, 499, "2s", repeat(1)["uuid"], proc="sh")
        wait_until(lambda: len(hooks(receiver)) >= 1000, 30, "the webhook's deliveries")


def test_two_replicas_on_redis_share_the_window(
    tmp_path: Path, receiver: Receiver, redis_url: str
) -> None:
    config = hub_config(receiver, "redis", redis_url, aggregatewindow="2s")
    with (HubProcess(tmp_path, config, name="a", grpc=True) as a,
          HubProcess(tmp_path, config, name="b", grpc=True) as b):
        assert publish([a, b], [repeat(n) for n in range(1000)]) < 2
        wait_until(lambda: len(slack_bodies(receiver)) >= 2, 10, "the summary")
        wait_until(lambda: len(hooks(receiver)) >= 1000, 30, "the webhook's deliveries")
        time.sleep(1.5)  # both flushers had several rounds at the ended window
        first, summary = slack_bodies(receiver)
        opener = first_payload()
        assert first == opener
        # Either replica may have opened the window: the uuid is that of its first alert.
        fields = summary["attachments"][0]["fields"]
        opened_by = next(f["value"] for f in fields if f["title"] == "lanner.aggregate_opener")
        assert summary == summary_payload(summary, 999, "2s", opened_by)
        assert stored_events(a) == stored_events(b) == 1000
        counted = [aggregated_metric(h).rsplit(" ", 1)[1] for h in (a, b)]
        assert sum(float(n) for n in counted) == 999


def test_windows_survive_a_hub_restart(tmp_path: Path, receiver: Receiver) -> None:
    config = hub_config(receiver, "sqlite", aggregatewindow="2s")
    hub = HubProcess(tmp_path, config, grpc=True).start()
    try:
        publish([hub], [repeat(n) for n in range(10)])
        wait_until(lambda: len(slack_bodies(receiver)) >= 1, 10, "the first alert")
    finally:
        assert hub.stop() == 0
    time.sleep(2.0)  # the window ends while no hub runs
    with hub:  # starts it again (and stops it at the end)
        wait_until(lambda: len(slack_bodies(receiver)) >= 2, 10, "the summary")
        time.sleep(1.0)
        first, summary = slack_bodies(receiver)
        assert first == first_payload()
        assert summary == summary_payload(summary, 9, "2s", FIRST_UUID)


def test_the_issue_figure_1000_posts_in_10s_window(tmp_path: Path, receiver: Receiver) -> None:
    """As Falco posts them (one HTTP request each), with the issue's 10 s window."""
    config = hub_config(receiver, "sqlite", aggregatewindow="10s")
    with HubProcess(tmp_path, config) as hub:
        started = time.monotonic()
        acked = post_all(hub.url, [repeat(n) for n in range(1000)])
        assert len(acked) == 1000
        assert time.monotonic() - started < 10, "the posts took longer than the window"
        wait_until(lambda: len(slack_bodies(receiver)) >= 2, 15, "the summary")
        first, summary = slack_bodies(receiver)
        assert first == first_payload()
        fields = summary["attachments"][0]["fields"]
        opened_by = next(f["value"] for f in fields if f["title"] == "lanner.aggregate_opener")
        assert summary == summary_payload(summary, 999, "10s", opened_by)
        assert stored_events(hub) == 1000
