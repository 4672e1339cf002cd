"""The detector's http_output sink (detector/publish_http.py): into a real hub's HTTP ingest,
the exact request against a recording receiver, refusals and Retry-After, an endpoint down then
up (nothing lost within the buffer, drops beyond it counted and reported), and bad URLs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from detector.publish import SinkError, open_sink
from detector.publish_buffer import DROPPED_RULE
from detector.publish_http import HttpSink
from sidekick.alert import Alert
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver

LANNER = str(Path(sys.executable).with_name("lanner"))
# Quick retries: an endpoint in these tests comes back within seconds.
FAST: dict[str, Any] = {"initial_backoff": 0.05, "max_backoff": 0.5}


def make_alerts(count: int, host: str) -> list[Alert]:
    """Alerts without a uuid (the sink must give each one) and with ``hostname=host``."""
    return [Alert.from_dict(falco_alert(n, uuid="", hostname=host)) for n in range(count)]


def stored(hub: HubProcess, host: str) -> dict[str, dict[str, Any]]:
    """The hub's events for ``host``, by uuid, through its API."""
    events: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 1000, "hostname": host}
    while True:
        page = httpx.get(f"{hub.url}/api/v1/events", params=params, timeout=30).json()
        events.update((event["uuid"], event) for event in page["events"])
        if not page["next_cursor"]:
            return events
        params["cursor"] = page["next_cursor"]


def balanced(stats: dict[str, int]) -> bool:
    """Every alert is in exactly one place."""
    return stats["published"] + stats["internal"] == (
        stats["acked"] + stats["rejected"] + stats["buffered"] + stats["dropped"])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def test_alerts_reach_the_hubs_http_ingest(tmp_path: Path) -> None:
    with HubProcess(tmp_path, {}) as hub:
        sink = open_sink(f"{hub.url}/")
        assert isinstance(sink, HttpSink)
        alerts = make_alerts(200, "http-ingest")
        for alert in alerts:
            sink.write(alert)
        assert sink.drain(30)
        assert sink.close() == 0
        events = stored(hub, "http-ingest")
    assert sink.stats()["acked"] == 200 and sink.stats()["dropped"] == 0
    assert set(events) == {alert.uuid for alert in alerts}  # the sink's uuids, kept by the hub
    for alert in alerts:
        event = events[alert.uuid]
        assert event["output_fields"] == alert.output_fields
        assert (event["rule"], event["priority"], event["time"]) == \
            (alert.rule, alert.priority.label, alert.time)


def test_the_request_is_falcos_http_output(receiver: Receiver) -> None:
    url = f"http://lanner:p%40ss@127.0.0.1:{receiver.port}/falco/in?token=abc"
    sink = HttpSink(url, **FAST)
    assert sink.name == f"http://127.0.0.1:{receiver.port}/falco/in"  # no credentials
    [alert] = make_alerts(1, "exact")
    sink.write(alert)
    assert sink.drain(10)
    sink.close()
    [request] = receiver.requests
    assert (request.method, request.path, request.query) == ("POST", "/falco/in", "token=abc")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"lanner/{importlib.metadata.version('lanner')}"
    assert request.headers["authorization"] == "Basic bGFubmVyOnBAc3M="  # lanner:p@ss
    assert request.body == alert.to_json()
    assert request.json == {
        "uuid": alert.uuid, "output": alert.output, "priority": "Warning",
        "rule": "Terminal shell in container", "time": "2026-11-29T10:00:00.123456789Z",
        "output_fields": falco_alert(0)["output_fields"], "source": "syscall",
        "tags": ["container", "mitre_execution", "shell"], "hostname": "exact",
    }


def test_refused_alerts_are_not_resent_and_retry_after_is_honoured(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.respond_with(400, body={"error": "bad", "field": "rule"}, times=1)
    receiver.respond_with(503, headers={"Retry-After": "1"}, times=1)
    sink = HttpSink(f"{receiver.url}/", **FAST)
    first, second = make_alerts(2, "refused")
    sink.write(first)
    sink.write(second)
    assert sink.drain(10)
    sink.close()
    requests = receiver.requests
    assert [r.status for r in requests] == [400, 503, 200]
    assert [r.json["uuid"] for r in requests] == [first.uuid, second.uuid, second.uuid]
    assert requests[2].received_at - requests[1].received_at >= 0.95
    stats = sink.stats()
    assert (stats["acked"], stats["rejected"], stats["dropped"]) == (1, 1, 0)
    assert "refused an alert of rule 'Terminal shell in container' (HTTP 400" in caplog.text


def test_an_endpoint_down_then_up_loses_nothing_within_the_buffer(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, {})  # its port is chosen, nothing listens on it yet
    sink = HttpSink(f"{hub.url}/", **FAST)
    alerts = make_alerts(300, "down-up")
    for alert in alerts:
        sink.write(alert)
    time.sleep(1.5)  # several refused connections
    stats = sink.stats()
    assert (stats["buffered"], stats["acked"], stats["dropped"]) == (300, 0, 0)
    with hub:  # starts it
        assert sink.drain(30)
        events = stored(hub, "down-up")
    assert sink.close() == 0
    assert set(events) == {alert.uuid for alert in alerts}
    assert sink.stats()["acked"] == 300 and balanced(sink.stats())


def test_beyond_the_buffer_drops_are_counted_and_reported(receiver: Receiver) -> None:
    receiver.fail_for(60)
    sink = HttpSink(f"{receiver.url}/", buffer_limit=20, **FAST)
    for alert in make_alerts(50, "overflow"):
        sink.write(alert)
    wait_until(lambda: receiver.count >= 3, 10, "retries while the endpoint fails")
    stats = sink.stats()
    assert (stats["buffered"], stats["dropped"]) == (20, 30) and balanced(stats)
    receiver.fail_until(0)
    assert sink.drain(20)
    sink.close()
    delivered = receiver.json_bodies(ok=True)
    assert [body["hostname"] for body in delivered[:20]] == ["overflow"] * 20
    [report] = [body for body in delivered if body["rule"] == DROPPED_RULE]
    assert report["output_fields"]["lanner.dropped"] == 30
    assert len(delivered) == 21 and balanced(sink.stats())


def test_bad_urls_are_one_clear_error() -> None:
    for spec in ("http://", "https://:2801/", "http://hub:port/", "http://hub:99999/"):
        with pytest.raises(SinkError, match="not a usable URL; expected http"):
            open_sink(spec)
    with pytest.raises(SinkError) as caught:
        open_sink("http://user:s3cret@hub:x/?token=t0ken")
    assert "s3cret" not in str(caught.value) and "t0ken" not in str(caught.value)
    done = subprocess.run([LANNER, "detect", "--output", "http://hub:99999/", "--source",
                           "records:/dev/null"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("lanner detect: --output http://hub:99999/: not a usable "
                                   "URL; expected http(s)://HOST[:PORT]/PATH, e.g. "
                                   "http://falcosidekick:2801/")
