"""The detector's gRPC publisher against real hub processes on loopback: batching and acks,
a hub down at start, the bounded buffer and its drop report, the spill file across a restart,
kill -9 of a hub mid-stream, failover between two replicas on Redis, mutual TLS and token.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from detector.publish_grpc import (
    DROPPED_RULE,
    INTERNAL_SOURCE,
    GrpcPublisher,
    PublisherStats,
    PublisherTls,
)
from detector.publish_spill import SpillFile
from sidekick.alert import Alert
from tests.certs import make_pki
from tests.hubproc import HubProcess, falco_alert

TOKEN = "s3cret-publisher-token"
# Quick retries: a test's hub comes back within seconds.
FAST = {"initial_backoff": 0.05, "max_backoff": 0.5}


def make_alerts(count: int, host: str, start: int = 0, *, uuid: bool = True) -> list[Alert]:
    """Alerts with ``hostname=host`` (each test reads back its own); uuids ``host-n``, or none
    (the publisher must then assign them)."""
    return [
        Alert.from_dict(falco_alert(n, uuid=f"{host}-{n:06d}" if uuid else "", hostname=host))
        for n in range(start, start + count)
    ]


def stored(hub: HubProcess, host: str) -> list[dict[str, Any]]:
    """Every event the hub stored for ``host``, through its API."""
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000, "hostname": host}
    while True:
        page = httpx.get(f"{hub.url}/api/v1/events", params=params, timeout=30).json()
        events += page["events"]
        if not page["next_cursor"]:
            return events
        params["cursor"] = page["next_cursor"]


def balanced(s: PublisherStats) -> bool:
    """Every alert is in exactly one place."""
    inflow = s.published + s.internal + s.recovered
    return inflow == s.acked + s.rejected + s.buffered + s.spill_backlog + s.dropped


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


def produce(publisher: GrpcPublisher, alerts: list[Alert], rate: float) -> threading.Thread:
    """Publish at a steady rate from another thread, as the detect loop would."""

    def run() -> None:
        start = time.monotonic()
        for i, alert in enumerate(alerts):
            publisher.publish(alert)
            if i % 50 == 0:
                time.sleep(max(0.0, start + i / rate - time.monotonic()))

    thread = threading.Thread(target=run, name="producer")
    thread.start()
    return thread


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    with HubProcess(tmp_path_factory.mktemp("hub"), {}, grpc=True) as process:
        yield process


def test_5000_alerts_acked_and_stored_once(hub: HubProcess) -> None:
    alerts = make_alerts(5000, "five-thousand", uuid=False)
    with GrpcPublisher(f"127.0.0.1:{hub.grpcport}") as publisher:
        start = time.monotonic()
        for alert in alerts:
            publisher.publish(alert)
        assert publisher.flush(30)
        elapsed = time.monotonic() - start
        stats = publisher.stats()
    print(f"\n{len(alerts) / elapsed:,.0f} alerts/s acked (5,000 alerts, one publisher, one hub)")
    assert (stats.published, stats.acked, stats.duplicates, stats.rejected) == (5000, 5000, 0, 0)
    assert (stats.buffered, stats.in_flight, stats.dropped, stats.reconnects) == (0, 0, 0, 0)
    assert stats.target == f"127.0.0.1:{hub.grpcport}"
    assert publisher.stats().target is None  # closed
    assert balanced(stats)
    # the publisher gave each alert its uuid before sending, so a resend would be recognised
    assert all(alert.uuid for alert in alerts)
    counts = collections.Counter(event["uuid"] for event in stored(hub, "five-thousand"))
    assert set(counts) == {alert.uuid for alert in alerts}
    assert max(counts.values()) == 1


def test_alerts_sent_again_are_acked_as_duplicates_and_stored_once(hub: HubProcess) -> None:
    alerts = make_alerts(100, "again")
    for duplicates in (0, 100):  # the second publisher plays a detector resending after a crash
        with GrpcPublisher(f"127.0.0.1:{hub.grpcport}", batch_size=30) as publisher:
            for alert in alerts:
                publisher.publish(alert)
            assert publisher.flush(10)
            stats = publisher.stats()
        assert (stats.acked, stats.duplicates, stats.buffered) == (100, duplicates, 0)
    assert sorted(e["uuid"] for e in stored(hub, "again")) == [a.uuid for a in alerts]


def test_rejected_alerts_are_counted_logged_once_per_field_and_not_resent(
    hub: HubProcess, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_alerts(10, "rejections")
    blank_rule = make_alerts(5, "rejections", 100)
    for alert in blank_rule:
        alert.rule = " "  # the hub refuses: rule is required
    no_fields = make_alerts(5, "rejections", 200)
    for alert in no_fields:
        alert.output_fields = {}  # the hub refuses: at least one field
    unencodable = make_alerts(2, "rejections", 300)
    for alert in unencodable:
        alert.output_fields = {"x": {1, 2}}  # not JSON: refused before sending
    caplog.set_level(logging.ERROR, "lanner.publish")
    with GrpcPublisher(f"127.0.0.1:{hub.grpcport}", batch_size=7) as publisher:
        for i in range(10):
            for group in (good, blank_rule, no_fields, unencodable):
                if i < len(group):
                    publisher.publish(group[i])
        assert publisher.flush(20)
        stats = publisher.stats()
    assert (stats.acked, stats.rejected, stats.buffered, stats.reconnects) == (10, 12, 0, 0)
    assert balanced(stats)
    assert {event["uuid"] for event in stored(hub, "rejections")} == {a.uuid for a in good}
    refusals = [r.getMessage() for r in caplog.records if "refused an alert" in r.getMessage()]
    assert len(refusals) == 2, refusals  # one per field: rule, output_fields
    assert any("rule: is required" in message for message in refusals)


def test_hub_down_at_start_then_everything_delivered(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, {}, grpc=True)  # ports chosen, not started yet
    alerts = make_alerts(1000, "late-hub")
    with GrpcPublisher(f"127.0.0.1:{hub.grpcport}", **FAST) as publisher:
        started = time.monotonic()
        for alert in alerts:
            publisher.publish(alert)
        wait_until(lambda: publisher.stats().last_error is not None, 5, "a connection error")
        stats = publisher.stats()
        assert "UNAVAILABLE" in (stats.last_error or "")
        assert (stats.buffered, stats.acked, stats.dropped, stats.target) == (1000, 0, 0, None)
        time.sleep(max(0.0, started + 3 - time.monotonic()))
        with hub:
            assert publisher.flush(20)
            stats = publisher.stats()
            assert (stats.acked, stats.duplicates, stats.dropped) == (1000, 0, 0)
            counts = collections.Counter(event["uuid"] for event in stored(hub, "late-hub"))
    assert set(counts) == {alert.uuid for alert in alerts}
    assert max(counts.values()) == 1


def test_buffer_bound_drops_exactly_and_reports_the_count(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, {}, grpc=True)
    alerts = make_alerts(150, "bounded")
    overflowed: list[Alert] = []
    with GrpcPublisher(
        f"127.0.0.1:{hub.grpcport}", buffer_limit=100, batch_size=40,
        on_overflow=overflowed.append, hostname="bounded", **FAST,
    ) as publisher:
        for alert in alerts:
            publisher.publish(alert)
        stats = publisher.stats()
        assert (stats.published, stats.buffered, stats.dropped) == (150, 100, 50)
        assert overflowed == alerts[100:]
        with hub:
            assert publisher.flush(20)
            stats = publisher.stats()
            events = stored(hub, "bounded")
    assert (stats.acked, stats.internal, stats.dropped, stats.buffered) == (101, 1, 50, 0)
    assert balanced(stats)
    reports = [e for e in events if e["rule"] == DROPPED_RULE]
    assert len(reports) == 1
    (report,) = reports
    assert report["source"] == INTERNAL_SOURCE
    assert report["priority"] == "Error"
    fields = report["output_fields"]
    assert fields["lanner.dropped"] == 50
    assert fields["lanner.buffer_limit"] == 100
    assert fields["lanner.dropped.first"] <= fields["lanner.dropped.last"]
    assert "dropped 50 alerts" in report["output"]
    assert {e["uuid"] for e in events if e["rule"] != DROPPED_RULE} == {
        a.uuid for a in alerts[:100]
    }


def test_spill_file_takes_the_overflow_and_survives_a_restart(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    hub = HubProcess(tmp_path, {}, grpc=True)
    first = make_alerts(300, "spilled")
    target = f"127.0.0.1:{hub.grpcport}"

    # Hub down: 100 in memory, 200 in the file; the hub returns and gets all 300.
    with GrpcPublisher(target, buffer_limit=100, batch_size=50, spill_path=spill,
                       **FAST) as publisher:
        for alert in first:
            publisher.publish(alert)
        stats = publisher.stats()
        assert (stats.buffered, stats.spilled, stats.spill_backlog, stats.dropped) == (
            100, 200, 200, 0)
        with hub:
            assert publisher.flush(20)
            stats = publisher.stats()
            assert (stats.acked, stats.spill_backlog, stats.dropped) == (300, 0, 0)
            size_when_delivered = spill.stat().st_size
    assert size_when_delivered == 36  # emptied back to its header once all was acknowledged

    # Hub down again; this detector stops before it returns. 100 in memory, 150 in the file
    # (its cap), 50 dropped: close() keeps the memory part and a drop report in the file.
    second = make_alerts(300, "spilled", 300)
    publisher = GrpcPublisher(target, buffer_limit=100, batch_size=50, spill_path=spill,
                              spill_limit=150, hostname="spilled", **FAST)
    for alert in second:
        publisher.publish(alert)
    stats = publisher.stats()
    assert (stats.buffered, stats.spilled, stats.dropped) == (100, 150, 50)
    assert publisher.close(timeout=0.2) == 251
    stats = publisher.stats()
    assert (stats.buffered, stats.spill_backlog, stats.internal) == (0, 251, 1)
    assert balanced(stats)
    with pytest.raises(RuntimeError):
        publisher.publish(second[0])

    # The restarted detector delivers what the file kept, the drop report included.
    with GrpcPublisher(target, spill_path=spill, **FAST) as restarted:
        assert restarted.stats().recovered == 251
        with hub:
            assert restarted.flush(20)
            stats = restarted.stats()
            events = stored(hub, "spilled")
    assert (stats.acked, stats.dropped, stats.spill_backlog) == (251, 0, 0)
    counts = collections.Counter(event["uuid"] for event in events)
    assert max(counts.values()) == 1
    (report,) = [e for e in events if e["rule"] == DROPPED_RULE]
    assert report["output_fields"]["lanner.dropped"] == 50
    assert set(counts) - {report["uuid"]} == {a.uuid for a in first + second[:250]}


def test_spill_file_recovery_cuts_a_torn_line_and_refuses_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "spill"
    spill = SpillFile(str(path), limit=10)
    with pytest.raises(ValueError, match="in use"):
        SpillFile(str(path), limit=10)
    for alert in make_alerts(3, "torn"):
        assert spill.append(alert.to_json() + b"\n")
    spill.close()
    with path.open("ab") as f:
        f.write(b'{"uuid": "half-writ')  # a crash in the middle of a line
    spill = SpillFile(str(path), limit=10)
    assert (spill.torn, spill.unread) == (1, 3)
    alerts, bad, lines = spill.read(3)
    assert ([a.uuid for a in alerts], bad, lines) == ([f"torn-{n:06d}" for n in range(3)], 0, 3)
    spill.close()
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a spill file\n")
    with pytest.raises(ValueError, match="not a Lanner spill file"):
        SpillFile(str(foreign), limit=10)


def test_hub_killed_mid_stream_unacked_batches_resent_and_stored_once(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, {}, grpc=True).start()
    alerts = make_alerts(20_000, "killed")
    try:
        with GrpcPublisher(f"127.0.0.1:{hub.grpcport}", batch_size=200, **FAST) as publisher:
            producer = produce(publisher, alerts, rate=8000)
            wait_until(lambda: publisher.stats().acked >= 5000, 20, "5000 acks")
            # Frozen first, so that batches are surely sent and unacknowledged at the kill.
            hub.proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: publisher.stats().in_flight > 0, 10, "a batch in flight")
            hub.kill()
            at_kill = publisher.stats()
            time.sleep(0.5)
            hub.start()
            producer.join()
            assert publisher.flush(30)
            stats = publisher.stats()
        counts = collections.Counter(event["uuid"] for event in stored(hub, "killed"))
    finally:
        hub.stop()
    print(f"\nkill -9 at {at_kill.acked} acked, {at_kill.in_flight} in flight; of those, "
          f"{stats.duplicates} had been stored before the kill")
    assert stats.reconnects >= 1
    assert (stats.acked, stats.dropped, stats.rejected) == (20_000, 0, 0)
    assert balanced(stats)
    # Acked alerts are never resent, so one stored before the kill and lost would be missing.
    assert set(counts) == {alert.uuid for alert in alerts}
    assert max(counts.values()) == 1


def test_hub_stopping_gracefully_is_drained_not_waited_for(tmp_path: Path) -> None:
    """A rolling update: the hub says GOAWAY; the publisher takes its acks and leaves, so the
    hub need not wait out its 2 s grace period, and nothing it accepted is sent again."""
    hub = HubProcess(tmp_path, {}, grpc=True).start()
    alerts = make_alerts(6000, "graceful")
    try:
        with GrpcPublisher(f"127.0.0.1:{hub.grpcport}", batch_size=100, **FAST) as publisher:
            producer = produce(publisher, alerts, rate=3000)
            wait_until(lambda: publisher.stats().acked >= 1500, 20, "1500 acks")
            started = time.monotonic()
            hub.stop()
            stopping = time.monotonic() - started
            hub.start()
            producer.join()
            assert publisher.flush(30)
            stats = publisher.stats()
        counts = collections.Counter(event["uuid"] for event in stored(hub, "graceful"))
    finally:
        hub.stop()
    assert stopping < 1.8, stopping
    assert (stats.acked, stats.duplicates, stats.dropped, stats.reconnects) == (6000, 0, 0, 1)
    assert set(counts) == {alert.uuid for alert in alerts}


def test_two_replicas_on_redis_failover_when_one_is_killed(
    tmp_path: Path, redis_url: str
) -> None:
    config = {"store": "redis", "redis": {"url": redis_url}}
    hubs = [HubProcess(tmp_path, config, name=name, grpc=True) for name in ("hub-a", "hub-b")]
    alerts = make_alerts(10_000, "replicas")
    for h in hubs:
        h.start()
    try:
        targets = [f"127.0.0.1:{h.grpcport}" for h in hubs]
        with GrpcPublisher(targets, batch_size=200, **FAST) as publisher:
            producer = produce(publisher, alerts, rate=5000)
            wait_until(lambda: publisher.stats().acked >= 2000
                       and publisher.stats().target is not None, 20, "2000 acks")
            victim = next(h for h in hubs if f":{h.grpcport}" in (publisher.stats().target or ""))
            survivor = next(h for h in hubs if h is not victim)
            victim.kill()
            producer.join()
            assert publisher.flush(30)
            stats = publisher.stats()
            assert stats.target == f"127.0.0.1:{survivor.grpcport}"
        counts = collections.Counter(event["uuid"] for event in stored(survivor, "replicas"))
    finally:
        for h in hubs:
            h.stop()
    assert stats.reconnects >= 1
    assert (stats.acked, stats.dropped) == (10_000, 0)
    assert set(counts) == {alert.uuid for alert in alerts}
    assert max(counts.values()) == 1


def test_mutual_tls_and_token_and_a_wrong_token_reported_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    config = {"grpc": {"certfile": pki.server_cert, "keyfile": pki.server_key,
                       "cacertfile": pki.ca_cert, "token": TOKEN}}
    tls = PublisherTls(pki.ca_cert, pki.client_cert, pki.client_key)
    wrong = "not-the-token-4242"
    caplog.set_level(logging.DEBUG, "lanner.publish")
    with HubProcess(tmp_path, config, grpc=True) as hub:
        # By name: dialled at the address it resolves to, the certificate checked for the name.
        with GrpcPublisher(f"localhost:{hub.grpcport}", tls=tls, token=TOKEN) as publisher:
            for alert in make_alerts(200, "mtls"):
                publisher.publish(alert)
            assert publisher.flush(20)
            stats = publisher.stats()
            assert stats.target == f"localhost:{hub.grpcport} (127.0.0.1:{hub.grpcport})"
            assert (stats.acked, stats.last_error) == (200, None)

        refused = GrpcPublisher(f"127.0.0.1:{hub.grpcport}", tls=tls, token=wrong, **FAST)
        for alert in make_alerts(10, "mtls", 1000):
            refused.publish(alert)
        wait_until(lambda: "authentication" in (refused.stats().last_error or ""), 10,
                   "an authentication error")
        stats = refused.stats()
        assert stats.last_error == (
            f"hub 127.0.0.1:{hub.grpcport}: authentication failed: the hub refused the "
            "publisher (wrong token)"
        )
        assert (stats.buffered, stats.acked, stats.dropped) == (10, 0, 0)  # kept, not dropped
        assert refused.close(timeout=0.2) == 10  # no spill file: lost, and said so
        assert len(stored(hub, "mtls")) == 200
        hub_log = hub.log()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "authentication failed" in logged
    assert "closing with 10 dropped alerts never reported" in logged
    for secret in (TOKEN, wrong):
        assert secret not in logged
        assert secret not in hub_log


def test_detect_output_grpc_sink_reaches_the_hub(
    hub: HubProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detector.publish import open_sink

    monkeypatch.delenv("LANNER_HUB_TOKEN", raising=False)
    sink = open_sink(f"grpc://127.0.0.1:{hub.grpcport}")
    alerts = make_alerts(20, "sink-host")
    for alert in alerts:
        sink.write(alert)
    sink.flush()
    sink.close()
    assert sorted(e["uuid"] for e in stored(hub, "sink-host")) == sorted(a.uuid for a in alerts)


def test_lanner_detect_publishes_over_mutual_tls_with_a_token(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = {"grpc": {"certfile": pki.server_cert, "keyfile": pki.server_key,
                       "cacertfile": pki.ca_cert, "token": TOKEN}}
    records = tmp_path / "records.jsonl"
    base = {"pid": 7, "tid": 7, "uid": 0, "gid": 0, "comm": "cat", "cgroup_id": 0}
    now = time.time_ns()
    rows = [{**base, "kind": "execve", "time_ns": now, "res": 0,
             "args": {"filename": "/usr/bin/cat", "argv": ["cat"]}}]
    rows += [{**base, "kind": "openat", "time_ns": now + n, "res": 3, "args": {
        "dirfd": -100, "flags": 0, "mode": 0, "fd": 3, "name": f"/home/u{n}/.ssh/id_rsa"}}
             for n in range(1, 6)]
    records.write_text("\n".join(orjson.dumps(row).decode() for row in rows) + "\n")
    detect = [sys.executable, "-m", "sidekick.cli", "detect", "--source", f"records:{records}"]
    with HubProcess(tmp_path, config, grpc=True) as hub:
        target = f"grpc://localhost:{hub.grpcport}"
        done = subprocess.run(
            [*detect, "--output", target, "--hub-cacert", pki.ca_cert, "--hub-cert",
             pki.client_cert, "--hub-key", pki.client_key],
            env={**os.environ, "LANNER_HUB_TOKEN": TOKEN, "FALCO_HOSTNAME": "mtls-node"},
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        events = stored(hub, "mtls-node")
        assert sorted(e["output_fields"]["fd.name"] for e in events) == [
            f"/home/u{n}/.ssh/id_rsa" for n in range(1, 6)]

        # an incomplete TLS setup, and an unreadable file: one line each, exit 2
        for extra, said in (
                (["--hub-cert", pki.client_cert, "--hub-key", pki.client_key], "--hub-cacert"),
                (["--hub-cacert", str(tmp_path / "missing.pem")], "missing.pem")):
            done = subprocess.run([*detect, "--output", target, *extra], capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 2 and said in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    assert TOKEN not in hub.log()
