"""HTTP ingest against the running hub: the Falco contract, validation, health, metrics."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver
from tests.support import free_port


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as rec:
        yield rec


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[HubProcess]:
    workdir = tmp_path_factory.mktemp("ingest")
    config = {
        "webhook": {"address": receiver.url, "minimumpriority": "notice"},
        "customtags": ["lanner"],
    }
    with HubProcess(workdir, config) as proc:
        yield proc


@pytest.fixture(autouse=True)
def _fresh(receiver: Receiver) -> None:
    receiver.reset()


def test_falco_alert_reaches_webhook_unchanged(hub: HubProcess, receiver: Receiver) -> None:
    alert = falco_alert(1)
    response = httpx.post(f"{hub.url}/", json=alert)
    assert response.status_code == 200
    assert response.json() == {"uuid": alert["uuid"], "duplicate": False}
    (request,) = receiver.wait_for(1)
    expected = {**alert, "tags": sorted([*alert["tags"], "lanner"])}
    assert request.json == expected
    # exact numbers survive (evt.time is a 64-bit nanosecond count)
    assert b'"evt.time":1795946400123456789' in request.body
    assert request.headers["content-type"] == "application/json; charset=utf-8"


def test_uuid_made_when_missing_and_kept_when_sent(hub: HubProcess, receiver: Receiver) -> None:
    alert = falco_alert(2)
    del alert["uuid"]
    made = httpx.post(f"{hub.url}/", json=alert).json()["uuid"]
    assert len(made) == 36
    (request,) = receiver.wait_for(1)
    assert request.json["uuid"] == made


def test_duplicate_uuid_is_acked_but_not_delivered_twice(
    hub: HubProcess, receiver: Receiver
) -> None:
    alert = falco_alert(3)
    first = httpx.post(f"{hub.url}/", json=alert).json()
    second = httpx.post(f"{hub.url}/", json=alert).json()
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    receiver.wait_for(1)
    httpx.post(f"{hub.url}/", json=falco_alert(4))  # a marker: delivered after the duplicate
    receiver.wait_for(2)
    assert receiver.uuids() == [alert["uuid"], falco_alert(4)["uuid"]]


def test_minimumpriority_filters_and_test_alert_bypasses(
    hub: HubProcess, receiver: Receiver
) -> None:
    low = falco_alert(5, priority="info")
    assert httpx.post(f"{hub.url}/", json=low).status_code == 200
    test = httpx.post(f"{hub.url}/test")
    assert test.status_code == 200
    (request,) = receiver.wait_for(1)
    assert request.json["rule"] == "Test rule"
    assert request.json["source"] == "internal"
    assert request.json["priority"] == "Debug"
    stored = httpx.get(f"{hub.url}/api/v1/events/{low['uuid']}").json()
    assert stored["priority"] == "Informational"  # stored for the UI even if not delivered


def test_ping_healthz_metrics(hub: HubProcess) -> None:
    assert httpx.get(f"{hub.url}/ping").text == "pong\n"
    assert httpx.get(f"{hub.url}/healthz").json() == {"status": "ok"}
    httpx.post(f"{hub.url}/", json=falco_alert(6))
    httpx.post(f"{hub.url}/", content=b"{}", headers={"content-type": "application/json"})
    text = httpx.get(f"{hub.url}/metrics").text
    assert 'falcosecurity_falcosidekick_inputs_total{source="requests",status="accepted"}' in text
    assert 'falcosecurity_falcosidekick_inputs_total{source="requests",status="rejected"}' in text
    assert "falcosecurity_falcosidekick_falco_events_total{" in text
    assert 'priority="4",priority_raw="warning"' in text
    assert 'lanner_queue_depth{destination="webhook"}' in text
    assert "lanner_delivery_latency_seconds_bucket" in text
    assert "lanner_dedup_hits_total" in text


def test_secrets_never_returned(hub: HubProcess, receiver: Receiver) -> None:
    outputs = httpx.get(f"{hub.url}/api/v1/outputs").json()
    assert outputs["webhook"]["config"]["address"] == "**********"
    for path in ("/api/v1/outputs", "/metrics", "/openapi.json"):
        assert str(receiver.port) not in httpx.get(f"{hub.url}{path}").text
    assert str(receiver.port) not in hub.log()


HUGE = b'{"rule":"r","priority":"Warning","time":"2026-11-29T10:00:00Z","output_fields":{"a":"' + (
    b"x" * (10 << 20)
) + b'"}}'


def _bad(**changes: object) -> bytes:
    alert = falco_alert(99)
    for key, value in changes.items():
        if value is ...:
            del alert[key]
        else:
            alert[key] = value
    return orjson.dumps(alert)


JSON = {"content-type": "application/json"}
MALFORMED = [
    ("not json", b"{nope", JSON, 400, "body"),
    ("empty body", b"", JSON, 400, "body"),
    ("json array", b"[]", JSON, 400, "body"),
    ("json string", b'"alert"', JSON, 400, "body"),
    ("invalid utf-8", b'{"rule": "\xff\xfe"}', JSON, 400, "body"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "body"),
    ("missing rule", _bad(rule=...), JSON, 400, "rule"),
    ("empty rule", _bad(rule="  "), JSON, 400, "rule"),
    ("rule not a string", _bad(rule=42), JSON, 400, "rule"),
    ("missing priority", _bad(priority=...), JSON, 400, "priority"),
    ("unknown priority", _bad(priority="urgent"), JSON, 400, "priority"),
    ("priority a number", _bad(priority=4), JSON, 400, "priority"),
    ("missing time", _bad(time=...), JSON, 400, "time"),
    ("time not rfc3339", _bad(time="yesterday"), JSON, 400, "time"),
    ("time impossible", _bad(time="2026-13-45T10:00:00Z"), JSON, 400, "time"),
    ("output_fields missing", _bad(output_fields=...), JSON, 400, "output_fields"),
    ("output_fields a list", _bad(output_fields=[1]), JSON, 400, "output_fields"),
    ("output_fields empty", _bad(output_fields={}), JSON, 400, "output_fields"),
    ("output_fields nested", _bad(output_fields={"a": {"b": 1}}), JSON, 400, "output_fields.a"),
    ("tags not a list", _bad(tags="a,b"), JSON, 400, "tags"),
    ("tags not strings", _bad(tags=[1]), JSON, 400, "tags"),
    ("hostname not a string", _bad(hostname=[]), JSON, 400, "hostname"),
    ("uuid too long", _bad(uuid="u" * 500), JSON, 400, "uuid"),
    ("10 MiB body", HUGE, JSON, 413, "body"),
    ("text/plain", _bad(), {"content-type": "text/plain"}, 415, "content-type"),
    ("form", b"a=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "content-type"),
    ("no content type", _bad(), {"content-type": ""}, 415, "content-type"),
]


@pytest.mark.parametrize(("body", "headers", "status", "field"),
                         [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_documented_4xx(
    hub: HubProcess, body: bytes, headers: dict[str, str], status: int, field: str
) -> None:
    response = httpx.post(f"{hub.url}/", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert httpx.get(f"{hub.url}/healthz").status_code == 200


def test_oversized_chunked_body_is_cut_off(hub: HubProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 65536

    response = httpx.post(f"{hub.url}/", content=chunks(), headers=JSON, timeout=30)
    assert response.status_code == 413


def test_unknown_paths_are_not_ingest(hub: HubProcess) -> None:
    # Falcosidekick treats any path as ingest; an unknown path here is a 404.
    assert httpx.post(f"{hub.url}/foo", json=falco_alert(7)).status_code == 404


def test_config_error_is_one_clear_line(tmp_path: Path) -> None:
    proc = HubProcess(tmp_path, {"webhook": {"address": "http://x", "minimumpriority": "urgnt"}})
    with pytest.raises(RuntimeError) as info:
        proc.start(timeout=10)
    log = proc.log()
    assert "configuration error" in log
    assert "webhook.minimumpriority" in log and "urgnt" in log
    assert "Traceback" not in log
    assert "did not start" in str(info.value)


@pytest.mark.parametrize("problem", ["redis down", "grpc port taken", "datadir not writable"])
def test_start_failure_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config: dict = {
        "redis down": {"store": "redis",
                       "redis": {"url": f"redis://:pw@127.0.0.1:{free_port()}/0"}},
        "grpc port taken": {},
        "datadir not writable": {"datadir": str(blocker / "data")},
    }[problem]
    proc = HubProcess(tmp_path, config, grpc=problem == "grpc port taken")
    with socket.socket() as taken:
        if proc.grpcport:
            taken.bind(("127.0.0.1", proc.grpcport))
            taken.listen()
        with pytest.raises(RuntimeError):
            proc.start(timeout=15)
    log = proc.log()
    assert "cannot start the hub" in log
    assert "Traceback" not in log and ":pw@" not in log
    assert proc.proc is not None and proc.proc.wait(timeout=10) == 1
