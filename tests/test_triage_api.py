"""Triage and delivery status through the API of running hubs, on both stores."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidekick.alert import format_time_ns
from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver, Reply

NOW = time.time_ns()


def alert(n: int, **overrides: Any) -> dict[str, Any]:
    return falco_alert(n, time=format_time_ns(NOW - (100 - n) * 10**9), **overrides)


@pytest.fixture(params=["sqlite", "redis"])
def hub(request: pytest.FixtureRequest, tmp_path, receiver: Receiver) -> Iterator[HubProcess]:
    config: dict[str, Any] = {
        "store": request.param,
        # Alerts of one `n` are aggregated for an hour: the second of a pair is only counted.
        "webhook": {"address": receiver.url, "timeout": 2, "maxattempts": 3,
                    "aggregatewindow": "1h", "aggregatefields": ["n"]},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "2m"},
    }
    if request.param == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis_url")}
    with HubProcess(tmp_path, config) as proc:
        yield proc


def wait_state(api: httpx.Client, uuid: str, state: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        [delivery] = api.get(f"/api/v1/events/{uuid}/deliveries").json()["deliveries"]
        if delivery["state"] == state:
            return delivery
        assert time.monotonic() < deadline, delivery
        time.sleep(0.1)


def test_delivery_status_of_each_kind(hub: HubProcess, receiver: Receiver) -> None:
    def answer(request: Any) -> Reply | None:
        n = request.json["output_fields"]["n"]
        if n == 2:
            return Reply(400)
        if n == 3:
            return Reply(503, headers={"Retry-After": "100"})
        return None

    receiver.set_responder(answer)
    uuid = [alert(n)["uuid"] for n in range(1, 5)]
    with httpx.Client(base_url=hub.url) as api:
        for a in (alert(1), alert(2), alert(4, output_fields={**alert(1)["output_fields"],
                                                             "n": 1})):
            assert api.post("/", json=a).status_code == 200
        delivered = wait_state(api, uuid[0], "delivered")
        assert delivered["attempts"] == 1
        assert [h["state"] for h in delivered["history"]] == ["delivered"]
        dead = wait_state(api, uuid[1], "dead")
        assert dead["reason"] == "webhook: HTTP 400" and dead["dead_id"]
        aggregated = wait_state(api, uuid[3], "aggregated")
        assert "aggregation window" in aggregated["reason"]
        redriven = api.post("/api/v1/deadletters/redrive",
                            json={"output": "webhook", "ids": [dead["dead_id"]]}).json()
        assert redriven == {"redriven": 1}
        receiver.set_responder(lambda request: answer(request) if request.json[
            "output_fields"]["n"] == 3 else None)
        again = wait_state(api, uuid[1], "delivered")
        assert [h["state"] for h in again["history"]] == ["dead", "redriven", "delivered"]
        # Last: a Retry-After holds the whole output for that long.
        assert api.post("/", json=alert(3)).status_code == 200
        retrying = wait_state(api, uuid[2], "retrying")
        assert "503" in retrying["reason"] and retrying["attempts"] == 1
        # Retry-After 100 s is honoured: the next attempt is that far off.
        assert 98 <= (retrying["next_attempt_ns"] - time.time_ns()) / 1e9 <= 101
        assert api.get("/api/v1/events/nope/deliveries").status_code == 404


def test_triage_one_and_many_and_filter(hub: HubProcess) -> None:
    with httpx.Client(base_url=hub.url) as api:
        for n in range(6):
            fields = {**alert(n)["output_fields"], "proc.name": "cron" if n % 2 else "bash"}
            assert api.post("/", json=alert(n, output_fields=fields)).status_code == 200
        first = alert(0)["uuid"]
        marked = api.post(f"/api/v1/events/{first}/triage",
                          json={"status": "acknowledged", "note": "looking", "actor": " ana "})
        assert marked.status_code == 200 and marked.json()["current"]["actor"] == "ana"
        many = api.post("/api/v1/triage", json={"like": alert(1)["uuid"], "fields": ["proc.name"],
                                                "status": "false_positive", "actor": "bo",
                                                "note": "cron is fine"})
        assert many.json() == {"triaged": 3}  # n = 1, 3, 5
        page = api.get("/api/v1/events", params={"triage": "false_positive"}).json()
        assert [e["output_fields"]["n"] for e in page["events"]] == [5, 3, 1]
        assert {t["status"] for t in page["triage"].values()} == {"false_positive"}
        fresh = api.get("/api/v1/events", params={"triage": "new"}).json()["events"]
        assert [e["output_fields"]["n"] for e in fresh] == [4, 2]
        stats = api.get("/api/v1/stats", params={"triage": "acknowledged,false_positive",
                                                 "since": "1h"}).json()
        assert stats["total"] == 4
        api.post(f"/api/v1/events/{first}/triage", json={"status": "resolved", "actor": "ana"})
        history = api.get(f"/api/v1/events/{first}/triage").json()
        assert [t["status"] for t in history["history"]] == ["acknowledged", "resolved"]
        assert history["current"]["status"] == "resolved"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/events/{uuid}/triage", {"status": "maybe", "actor": "a"}, "status"),
    ("/api/v1/events/{uuid}/triage", {"status": "resolved", "actor": "  "}, "actor"),
    ("/api/v1/events/{uuid}/triage", {"status": "resolved"}, "actor"),
    ("/api/v1/triage", {"status": "resolved", "actor": "a", "uuids": ["x"], "like": "y"},
     "uuids"),
    ("/api/v1/triage", {"status": "resolved", "actor": "a", "like": "{uuid}",
                        "fields": ["fd.name"]}, "fields"),
])
def test_bad_triage_requests_name_the_field(hub: HubProcess, path: str, body: dict,
                                            field: str) -> None:
    uuid = alert(0)["uuid"]
    with httpx.Client(base_url=hub.url) as api:
        api.post("/", json=alert(0))
        body = {k: v.replace("{uuid}", uuid) if isinstance(v, str) else v
                for k, v in body.items()}
        response = api.post(path.replace("{uuid}", uuid), json=body)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
        assert api.post("/api/v1/events/nope/triage",
                        json={"status": "resolved", "actor": "a"}).status_code == 404
        assert api.get("/api/v1/events", params={"triage": "later"}).json()["field"] == "triage"
        assert api.get("/api/v1/events", params={"field": "no-colon"}).json()["field"] == "field"
    assert "Traceback" not in hub.log()
