"""Durable delivery against running hubs: retries, kill -9, replicas on one Redis."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hubproc import HubProcess, falco_alert
from tests.receiver import Receiver


def hub_config(receiver: Receiver, store: str, redis_url: str = "", **webhook: Any) -> dict:
    config: dict[str, Any] = {
        "store": store,
        "webhook": {"address": receiver.url, "maxconcurrentrequests": 4, "timeout": 2,
                    **webhook},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s", "leasemargin": "2s"},
    }
    if redis_url:
        config["redis"] = {"url": redis_url}
    return config


@pytest.fixture(params=["sqlite", "redis"])
def store_config(request: pytest.FixtureRequest, receiver: Receiver) -> dict:
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    return hub_config(receiver, request.param, redis_url)


def post_all(url: str, alerts: list[dict], concurrency: int = 8) -> list[str]:
    """POST alerts concurrently; returns the uuids acknowledged with 200."""

    async def run() -> list[str]:
        acked: list[str] = []
        queue: asyncio.Queue[dict] = asyncio.Queue()
        for alert in alerts:
            queue.put_nowait(alert)

        async def worker(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                alert = queue.get_nowait()
                try:
                    response = await client.post(f"{url}/", json=alert)
                except httpx.HTTPError:
                    return  # the hub is gone
                if response.status_code == 200:
                    acked.append(alert["uuid"])

        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return acked

    return asyncio.run(run())


def wait_delivered(receiver: Receiver, uuids: set[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = receiver.uuids(ok=True)
        if uuids <= set(got):
            return got
        time.sleep(0.1)
    missing = uuids - set(receiver.uuids(ok=True))
    raise AssertionError(f"{len(missing)} acknowledged alert(s) never delivered")


def duplicates(uuids: list[str]) -> int:
    return sum(n - 1 for n in collections.Counter(uuids).values())


def test_retry_after_503_then_all_arrive_once(
    tmp_path: Path, receiver: Receiver, store_config: dict
) -> None:
    receiver.respond_with(503, {"Retry-After": "1"}, times=30)
    with HubProcess(tmp_path, store_config) as hub:
        alerts = [falco_alert(n) for n in range(50)]
        acked = post_all(hub.url, alerts)
        assert len(acked) == 50
        got = wait_delivered(receiver, set(acked), timeout=30)
        assert duplicates(got) == 0
        statuses = collections.Counter(r.status for r in receiver.requests)
        assert statuses[503] == 30
        # each retry came no sooner than the Retry-After the receiver asked for
        last_failure: dict[str, float] = {}
        for r in receiver.requests:
            uuid = r.json["uuid"]
            if uuid in last_failure:
                assert r.received_at - last_failure.pop(uuid) >= 0.95
            if r.status == 503:
                last_failure[uuid] = r.received_at
        metrics = httpx.get(f"{hub.url}/metrics").text
        assert 'lanner_delivery_retries_total{destination="webhook"}' in metrics
        assert 'falcosecurity_falcosidekick_outputs_total{destination="webhook",status="error"}' \
            in metrics


def test_permanent_error_dead_letters_and_redrive(
    tmp_path: Path, receiver: Receiver, store_config: dict
) -> None:
    receiver.respond_with(400, times=1)
    with HubProcess(tmp_path, store_config) as hub:
        alert = falco_alert(1)
        assert httpx.post(f"{hub.url}/", json=alert).status_code == 200
        receiver.wait_for(1)
        deadline = time.monotonic() + 10
        while not (dead := httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"]):
            assert time.monotonic() < deadline, "never dead-lettered"
            time.sleep(0.1)
        assert dead[0]["alert"]["uuid"] == alert["uuid"]
        assert dead[0]["reason"] == "webhook: HTTP 400"
        redriven = httpx.post(f"{hub.url}/api/v1/deadletters/redrive", json={"output": "webhook"})
        assert redriven.json() == {"redriven": 1}
        wait_delivered(receiver, {alert["uuid"]}, timeout=10)
        assert httpx.get(f"{hub.url}/api/v1/deadletters").json()["deadletters"] == []


def test_kill_9_while_streaming_then_restart_delivers_every_ack(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = hub_config(receiver, "sqlite")
    receiver.delay = 0.002
    hub = HubProcess(tmp_path, config).start()
    alerts = [falco_alert(n) for n in range(5000)]

    def killer() -> None:
        while receiver.count < 1000:
            time.sleep(0.005)
        hub.kill()

    thread = threading.Thread(target=killer)
    thread.start()
    acked = post_all(hub.url, alerts)
    thread.join()
    assert 1000 <= len(acked) < 5000, f"kill did not land mid-stream ({len(acked)} acked)"
    hub.start()
    try:
        got = wait_delivered(receiver, set(acked), timeout=60)
    finally:
        hub.stop()
    in_flight = config["webhook"]["maxconcurrentrequests"]  # batchsize 1
    assert duplicates(got) <= in_flight


def test_two_replicas_on_redis_deliver_exactly_once(
    tmp_path: Path, receiver: Receiver, redis_url: str
) -> None:
    config = hub_config(receiver, "redis", redis_url)
    with HubProcess(tmp_path, config, name="a") as a, HubProcess(tmp_path, config, name="b") as b:
        alerts = [falco_alert(n) for n in range(1000)]
        acked = post_all(a.url, alerts[::2]) + post_all(b.url, alerts[1::2])
        # the same alerts again through the other replica: deduplicated across replicas
        post_all(b.url, alerts[:100:2])
        assert len(acked) == 1000
        got = wait_delivered(receiver, set(acked), timeout=60)
        time.sleep(0.5)
        assert duplicates(receiver.uuids(ok=True)) == 0, "an alert was delivered twice"
        assert len(got) == 1000
        # both replicas serve the same events
        page_a = httpx.get(f"{a.url}/api/v1/events", params={"limit": 5}).json()
        page_b = httpx.get(f"{b.url}/api/v1/events", params={"limit": 5}).json()
        assert page_a == page_b


def test_killed_replica_pending_deliveries_finished_by_the_other(
    tmp_path: Path, receiver: Receiver, redis_url: str
) -> None:
    config = hub_config(receiver, "redis", redis_url)
    receiver.delay = 0.05  # slow output: replica a holds leased deliveries when it dies
    a = HubProcess(tmp_path, config, name="a").start()
    with HubProcess(tmp_path, config, name="b") as b:
        acked = post_all(a.url, [falco_alert(n) for n in range(300)])
        assert len(acked) == 300
        receiver.wait_for(20)
        a.kill()
        acked += post_all(b.url, [falco_alert(n) for n in range(300, 400)])
        got = wait_delivered(receiver, set(acked), timeout=90)
        in_flight = config["webhook"]["maxconcurrentrequests"]
        assert duplicates(got) <= in_flight
        assert "webhook" in httpx.get(f"{b.url}/api/v1/outputs").json()


def test_sigterm_drains_in_flight_and_restart_resumes_pending(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = hub_config(receiver, "sqlite")
    config["delivery"]["drain"] = "5s"
    receiver.delay = 0.3  # every send is in flight for a while
    hub = HubProcess(tmp_path, config).start()
    acked = post_all(hub.url, [falco_alert(n) for n in range(40)])
    receiver.wait_for(4)
    started = time.monotonic()
    assert hub.stop() == 0
    assert time.monotonic() - started < 5
    # every request the receiver saw had its answer waited for: none was cut off
    before = receiver.requests
    assert before and all(r.status == 200 for r in before)
    assert len(before) < 40, "the whole queue was sent before the stop; make sends slower"
    receiver.delay = 0.0
    hub.start()
    try:
        got = wait_delivered(receiver, set(acked), timeout=30)
    finally:
        hub.stop()
    assert duplicates(got) == 0  # drained sends were completed, not sent again
