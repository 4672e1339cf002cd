"""The whole pipeline with real processes on loopback: `lanner detect` (on the real kernel, or
replaying a recording) publishes over gRPC to real hub replicas, which deliver to a recording
webhook, the real Alertmanager, and moto's S3 and SQS.

The faults of a cluster (a hub out of reach for a minute, an output rate-limiting) are in
test_e2e_faults.py.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sidekick.alert import parse_time_ns
from tests.alertmanager import AlertmanagerServer
from tests.aws import ACCESS_KEY, REGION, SECRET_KEY, MotoServer
from tests.ebpf_support import prepared_node
from tests.hubproc import HubProcess
from tests.receiver import Receiver
from tests.support import stop_process

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RULES = REPO / "rules" / "lanner_rules.yaml"
node = pytest.fixture(scope="module", name="node")(prepared_node)


class Detector:
    """`lanner detect` publishing to hubs over gRPC; its stderr kept in a file."""

    def __init__(self, scratch: Path, *args: str, ready: str | None = None) -> None:
        self.err = scratch / "detect.err"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "sidekick.cli", "detect", *args],
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while ready is not None and ready not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"lanner detect did not get ready: {self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc, 30)


def arrived_wall_time(receiver: Receiver, request_at: float) -> float:
    """The wall-clock time of a recorded request (the receiver notes monotonic time)."""
    return time.time() - (time.monotonic() - request_at)


def test_a_real_behaviour_reaches_the_webhook_and_alertmanager_within_2_s(
        node: None, tmp_path: Path, receiver: Receiver) -> None:
    alertmanager = AlertmanagerServer(tmp_path / "alertmanager")
    config = {"webhook": {"address": f"{receiver.url}/webhook"},
              "alertmanager": {"hostport": alertmanager.url}}
    hub = HubProcess(tmp_path, config, grpc=True).start()
    detector = None
    try:
        detector = Detector(tmp_path, "--rules", str(DEFAULT_RULES), "--output",
                            f"grpc://127.0.0.1:{hub.grpcport}", ready="eBPF source attached")
        subprocess.run(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL, check=True)

        def ours(request: Any) -> bool:
            body = request.json
            return (isinstance(body, dict) and body.get("rule") == "Credential file read"
                    and body["output_fields"].get("fd.name") == "/etc/shadow"
                    and body["output_fields"].get("proc.name") == "cat")

        deadline = time.monotonic() + 10
        while not (found := [r for r in receiver.requests if ours(r)]):
            assert time.monotonic() < deadline, f"no alert at the webhook: {detector.stderr()}"
            time.sleep(0.01)
        request = found[0]
        alert = request.json
        assert len(alert["uuid"]) == 36
        event_time = parse_time_ns(alert["time"]) / 1e9
        latency = arrived_wall_time(receiver, request.received_at) - event_time
        assert 0 <= latency < 2.0, f"{latency:.3f} s from the event to the webhook"
        assert alert["output_fields"]["user.name"] == "root"
        assert alert["priority"] == "Warning" and alert["source"] == "syscall"

        deadline = time.monotonic() + 2
        while True:
            held = [a for a in alertmanager.alerts()
                    if a["labels"].get("rule") == "Credential file read"
                    and a["labels"].get("fd_name") == "/etc/shadow"]
            if held or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert held, f"not in Alertmanager within 2 s of reaching the webhook: {hub.log()}"
        assert held[0]["labels"]["proc_name"] == "cat"
        # the hub keeps the event under the detector's uuid
        stored = httpx.get(f"{hub.url}/api/v1/events/{alert['uuid']}")
        assert stored.status_code == 200 and stored.json()["rule"] == "Credential file read"
    finally:
        if detector is not None:
            detector.stop()
        hub.stop()
        alertmanager.stop()


# ---- two replicas, one killed mid-flow ------------------------------------------------------

FLOW = 10_000
CRITICAL_EVERY = 10  # one alert in ten is critical: what S3 and SQS are given
RULES = """\
- rule: E2E key read
  desc: test rule
  condition: evt.type in (open, openat) and fd.name startswith /e2e/warn/
  output: key read (file=%fd.name proc=%proc.name)
  priority: WARNING
- rule: E2E secret read
  desc: test rule
  condition: evt.type in (open, openat) and fd.name startswith /e2e/crit/
  output: secret read (file=%fd.name proc=%proc.name)
  priority: CRITICAL
"""


def recording(path: Path, count: int) -> None:
    """A process that opens ``count`` distinct files, one in CRITICAL_EVERY critical."""
    t = time.time_ns()
    base = {"pid": 500, "tid": 500, "uid": 0, "gid": 0, "comm": "reader", "cgroup_id": 0}
    rows = [{**base, "kind": "execve", "time_ns": t, "res": 0,
             "args": {"filename": "/usr/bin/reader", "argv": ["reader"]}}]
    for n in range(count):
        kind = "crit" if n % CRITICAL_EVERY == 0 else "warn"
        rows.append({**base, "kind": "openat", "time_ns": t + n, "res": 3, "args": {
            "dirfd": -100, "flags": 0, "mode": 0, "fd": 3, "name": f"/e2e/{kind}/{n}"}})
        rows.append({**base, "kind": "close", "time_ns": t + n, "res": 0, "args": {"fd": 3}})
    path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


def sqs_count(moto: MotoServer, queue_url: str) -> int:
    attributes = moto.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])  # exact in moto


def test_two_replicas_one_killed_mid_flow_every_alert_delivered(
        tmp_path: Path, receiver: Receiver, redis_url: str, moto: MotoServer) -> None:
    alertmanager = AlertmanagerServer(tmp_path / "alertmanager")
    moto.create_bucket("alerts")
    queue = moto.create_queue("alerts.fifo")
    config = {
        "store": "redis", "redis": {"url": redis_url},
        "webhook": {"address": f"{receiver.url}/webhook", "maxconcurrentrequests": 4},
        "alertmanager": {"hostport": alertmanager.url},
        "aws": {"region": REGION, "accesskeyid": ACCESS_KEY, "secretaccesskey": SECRET_KEY,
                "s3": {"bucket": "alerts", "endpoint": moto.url,
                       "minimumpriority": "critical"},
                "sqs": {"url": queue, "endpoint": moto.url, "minimumpriority": "critical"}},
        "delivery": {"initialbackoff": "50ms", "maxbackoff": "1s", "leasemargin": "2s"},
    }
    rules = tmp_path / "e2e_rules.yaml"
    rules.write_text(RULES)
    records = tmp_path / "flow.jsonl"
    recording(records, FLOW)
    a = HubProcess(tmp_path, config, name="a", grpc=True).start()
    b = HubProcess(tmp_path, config, name="b", grpc=True).start()
    detector = None
    try:
        detector = Detector(
            tmp_path, "--rules", str(rules), "--source", f"records:{records}",
            "--replay-rate", "2000",  # records/s: two per alert, so 1,000 alerts/s
            "--output", f"grpc://127.0.0.1:{a.grpcport},127.0.0.1:{b.grpcport}")
        deadline = time.monotonic() + 60
        while len(receiver.requests) < FLOW * 3 // 10:  # a third of the way: kill a replica
            assert time.monotonic() < deadline and detector.proc.poll() is None, \
                f"the flow did not start: {detector.stderr()}\n{a.log()}"
            time.sleep(0.01)
        a.kill()
        killed_at = len(receiver.requests)
        assert killed_at < FLOW, "the kill landed after the flow"
        assert detector.wait(timeout=120) == 0, detector.stderr()

        expected = FLOW
        deadline = time.monotonic() + 120
        while len(set(receiver.uuids(ok=True))) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        delivered = receiver.uuids(ok=True)
        assert len(set(delivered)) == expected, (
            f"{expected - len(set(delivered))} alerts never reached the webhook\n{b.log()}")
        repeats = sum(n - 1 for n in collections.Counter(delivered).values())
        # Only a delivery in flight at the kill may be made again: at most the killed
        # replica's concurrent webhook requests (one alert each).
        assert repeats <= config["webhook"]["maxconcurrentrequests"], repeats
        print(f"\nwebhook: {expected} alerts, {repeats} delivered twice (in flight at the kill "
              f"of replica a, after {killed_at} requests)")

        # The outputs that can be idempotent show no duplicate at all.
        critical = FLOW // CRITICAL_EVERY
        assert len(moto.wait_keys("alerts", critical, timeout=120)) == critical
        deadline = time.monotonic() + 120
        while sqs_count(moto, queue) < critical and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # a late duplicate would show up now
        assert len(moto.keys("alerts")) == critical  # S3: one object per uuid
        assert sqs_count(moto, queue) == critical  # SQS FIFO: deduplicated by uuid
        deadline = time.monotonic() + 60
        while len(alertmanager.alerts()) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        held = alertmanager.alerts()
        # Alertmanager: one alert per label set, and every alert's set is distinct (its file)
        assert len(held) == expected
        assert len({a["labels"]["fd_name"] for a in held}) == expected
    finally:
        if detector is not None:
            detector.stop()
        a.stop()
        b.stop()
        alertmanager.stop()
