"""The faults of a cluster, with real processes on loopback: `lanner detect` replaying a
recording publishes over gRPC to a real hub, which delivers to a recording webhook.

- the hub out of reach for 60 s while alerts are produced: nothing lost within the publisher's
  buffer bound; beyond it, the overflow counted exactly and reported once the hub is back;
- the output answering 429 with Retry-After for 60 s: nothing lost, and the hub waits as it is
  told instead of hammering the output.

These are the two slow tests of the suite (about 80 s each): the faults last a real minute.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from detector.publish_buffer import DROPPED_RULE
from tests.hubproc import HubProcess
from tests.receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules" / "lanner_rules.yaml"
RULE = "Credential file read"
KEY_PATH = re.compile(r"/home/([a-z]+)(\d+)/\.ssh/id_rsa")
RECORDS_PER_ALERT = 2  # openat + close


def recording(path: Path, label: str, count: int) -> None:
    """`cat` reading the SSH private keys of ``count`` users, /home/<label><n>/.ssh/id_rsa:
    one "Credential file read" alert each (rules/lanner_rules.yaml), told apart by the path."""
    t = time.time_ns()
    base = {"pid": 700, "tid": 700, "uid": 0, "gid": 0, "comm": "cat", "cgroup_id": 0}
    rows = [{**base, "kind": "execve", "time_ns": t, "res": 0,
             "args": {"filename": "/usr/bin/cat", "argv": ["cat"]}}]
    for n in range(count):
        rows.append({**base, "kind": "openat", "time_ns": t + n, "res": 3, "args": {
            "dirfd": -100, "flags": 0, "mode": 0, "fd": 3,
            "name": f"/home/{label}{n}/.ssh/id_rsa"}})
        rows.append({**base, "kind": "close", "time_ns": t + n, "res": 0, "args": {"fd": 3}})
    path.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")


class Detector:
    """`lanner detect` replaying ``count`` alerts' worth of records at ``rate`` alerts/s to
    the hub; stderr kept in a file. It exits when the recording ends (after up to 10 s
    delivering what the hub has not acknowledged yet)."""

    def __init__(self, workdir: Path, label: str, count: int, rate: float, hub: HubProcess,
                 *options: str) -> None:
        self.label, self.count = label, count
        records = workdir / f"{label}.jsonl"
        recording(records, label, count)
        empty = workdir / "no-proc"  # the recording's pids are not this machine's
        empty.mkdir(exist_ok=True)
        self.err_path = workdir / f"{label}.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidekick.cli", "detect", "--rules", str(RULES),
                 "--source", f"records:{records}",
                 "--replay-rate", str(rate * RECORDS_PER_ALERT),
                 "--output", f"grpc://127.0.0.1:{hub.grpcport}",
                 "--proc-root", str(empty), "--runtime-socket", str(workdir / "none.sock"),
                 *options],
                stdout=subprocess.DEVNULL, stderr=err)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def finish(self, timeout: float) -> int:
        """Wait for the end of the replay; returns how many alerts the detector made."""
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"detector {self.label} still running after {timeout:.0f}s: "
                        f"{self.stderr()}")
        assert status == 0, self.stderr()
        assert "not acknowledged by a hub at exit" not in self.stderr(), self.stderr()
        made = re.search(r"alerts=(\d+)", self.stderr())
        assert made is not None, self.stderr()
        return int(made[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Tally:
    """What the receiver was given: per detector label, how many times each alert arrived
    (answered 2xx); the "alerts dropped" reports; every uuid's count."""

    arrived: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    reports: list[dict[str, Any]] = field(default_factory=list)
    uuids: collections.Counter[str] = field(default_factory=collections.Counter)

    @classmethod
    def of(cls, receiver: Receiver) -> Tally:
        tally = cls()
        for body in receiver.json_bodies(ok=True):
            tally.uuids[body["uuid"]] += 1
            if body["rule"] == DROPPED_RULE:
                tally.reports.append(body)
                continue
            assert body["rule"] == RULE, body
            key = KEY_PATH.fullmatch(body["output_fields"]["fd.name"])
            assert key is not None, body
            tally.arrived[key[1]][int(key[2])] += 1
        return tally

    def dropped(self, buffer_limit: int) -> int:
        """The drops reported by the publisher with that bound."""
        return sum(r["output_fields"]["lanner.dropped"] for r in self.reports
                   if r["output_fields"]["lanner.buffer_limit"] == buffer_limit)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.uuids.values())


def wait_for(condition: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what()}")
        time.sleep(0.2)


def metric(hub: HubProcess, name: str) -> float:
    text = httpx.get(f"{hub.url}/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


# ---- the hub out of reach for a minute ------------------------------------------------------

OUTAGE_S = 60.0
RATE = 40  # alerts/s from each detector
KEPT_BUFFER = 10_000  # holds an outage's alerts
BOUNDED_BUFFER = 300  # holds a few seconds of them


def test_hub_unreachable_for_60_s_nothing_lost_within_the_bound_overflow_exact_beyond(
        tmp_path: Path, receiver: Receiver) -> None:
    # The outage is the hub frozen (SIGSTOP/SIGCONT), not killed: as when the network between
    # node and hub is gone, connections stay open and the kernel still completes new TCP
    # handshakes, but nothing answers. The publisher has to notice with its own timers (no
    # ack, health checks timing out), and batches it sent into the void are read by the hub
    # when it wakes up, stored, and sent again by the publisher: the hub's uuid dedup must
    # keep them from being delivered twice. (A kill would refuse connections at once, the
    # easy case test_publish_grpc.py covers.)
    # The freeze also stops the hub's own deliveries, which a network cut would not: a send
    # to the webhook in progress at the SIGSTOP must not time out, nor its lease expire, when
    # the hub wakes 60 s later, or the hub itself would deliver it twice. Hence a send
    # timeout longer than the outage.
    config = {"webhook": {"address": f"{receiver.url}/webhook", "maxconcurrentrequests": 4,
                          "timeout": OUTAGE_S + 30}}
    # Each detector produces through the outage and 20 s beyond it, time for the publisher to
    # find the hub again and deliver before the recording ends.
    count = int(RATE * (OUTAGE_S + 20))
    in_outage = RATE * OUTAGE_S
    assert BOUNDED_BUFFER < in_outage < KEPT_BUFFER
    hub = HubProcess(tmp_path, config, grpc=True).start()
    detectors: list[Detector] = []
    try:
        kept = Detector(tmp_path, "kept", count, RATE, hub, "--publish-buffer", str(KEPT_BUFFER))
        detectors.append(kept)
        bounded = Detector(tmp_path, "bounded", count, RATE, hub,
                           "--publish-buffer", str(BOUNDED_BUFFER))
        detectors.append(bounded)

        def flowing() -> bool:
            arrived = Tally.of(receiver).arrived
            return len(arrived["kept"]) >= RATE and len(arrived["bounded"]) >= RATE

        wait_for(flowing, 30, lambda: f"the flow did not start: {kept.stderr()}"
                 f"{bounded.stderr()}\n{hub.log()}")
        assert hub.proc is not None
        hub.proc.send_signal(signal.SIGSTOP)
        time.sleep(OUTAGE_S)
        hub.proc.send_signal(signal.SIGCONT)
        assert kept.proc.poll() is None and bounded.proc.poll() is None, \
            "a recording ended during the outage: make it longer"

        made = {d.label: d.finish(timeout=60) for d in detectors}
        assert made == {"kept": count, "bounded": count}

        def settled() -> bool:
            tally = Tally.of(receiver)
            return (len(tally.arrived["kept"]) == count and tally.dropped(BOUNDED_BUFFER) > 0
                    and len(tally.arrived["bounded"]) + tally.dropped(BOUNDED_BUFFER) >= count)

        wait_for(settled, 60, lambda: f"{Tally.of(receiver)}\n{hub.log()}")
        time.sleep(1)  # a late duplicate would arrive now
        tally = Tally.of(receiver)
        dedup_hits = metric(hub, "lanner_dedup_hits_total")
    finally:
        for detector in detectors:
            detector.stop()
        if hub.proc is not None:
            hub.proc.send_signal(signal.SIGCONT)  # a frozen hub would not hear the SIGTERM
        hub.stop()

    # Within the bound: every alert, once.
    assert sorted(tally.arrived["kept"]) == list(range(count))
    # Beyond it: what arrived and what the report counts are exactly what was produced, and
    # the alerts missing are one run, those made while the buffer was full.
    bounded_arrived = sorted(tally.arrived["bounded"])
    dropped = tally.dropped(BOUNDED_BUFFER)
    assert len(bounded_arrived) + dropped == count
    missing = sorted(set(range(count)) - set(bounded_arrived))
    assert missing == list(range(missing[0], missing[0] + dropped))
    # (all the outage's alerts beyond the bound, give or take its edges)
    assert dropped >= in_outage - BOUNDED_BUFFER - 2 * RATE
    # Reported: by the bounded publisher only, as its documented internal alert.
    assert tally.dropped(KEPT_BUFFER) == 0
    assert tally.reports, "no report"
    for report in tally.reports:
        assert (report["priority"], report["source"]) == ("Error", "internal")
        assert f"dropped {report['output_fields']['lanner.dropped']} alerts" in report["output"]
    # Nothing twice: batches resent after the outage were recognised by their uuid.
    assert tally.duplicates == 0
    print(f"\n{count} alerts per detector, {in_outage:.0f} of them during the {OUTAGE_S:.0f} s "
          f"outage: buffer {KEPT_BUFFER} lost none; buffer {BOUNDED_BUFFER} dropped {dropped} "
          f"(alerts {missing[0]}-{missing[-1]}), reported in {len(tally.reports)} alert(s); "
          f"{dedup_hits:.0f} resent alerts recognised by the hub as duplicates, 0 delivered "
          "twice")


# ---- an output rate-limiting for a minute ---------------------------------------------------

LIMITED_S = 60.0
RETRY_AFTER = 10  # seconds, as the output says
WORKERS = 2  # the webhook's maxconcurrentrequests
LIMITED_RATE = 10  # alerts/s
LIMITED_COUNT = 450  # produced within the first 45 s of the limit


def test_output_429_with_retry_after_for_60_s_nothing_lost_and_not_hammered(
        tmp_path: Path, receiver: Receiver) -> None:
    max_backoff = 2 * RETRY_AFTER
    config = {"webhook": {"address": f"{receiver.url}/webhook",
                          "maxconcurrentrequests": WORKERS},
              "delivery": {"maxbackoff": max_backoff}}
    hub = HubProcess(tmp_path, config, grpc=True).start()
    detector = None
    try:
        receiver.fail_for(LIMITED_S, 429, {"Retry-After": str(RETRY_AFTER)})
        limit_ends = time.monotonic() + LIMITED_S
        detector = Detector(tmp_path, "limited", LIMITED_COUNT, LIMITED_RATE, hub)
        assert detector.finish(timeout=LIMITED_S) == LIMITED_COUNT
        assert time.monotonic() < limit_ends, "the alerts were not all made during the limit"
        # Once the limit is over, a delivery waits at most maxbackoff for its next attempt.
        wait_for(lambda: len(Tally.of(receiver).arrived["limited"]) == LIMITED_COUNT,
                 limit_ends + max_backoff + 15 - time.monotonic(),
                 lambda: f"{len(Tally.of(receiver).arrived['limited'])} of {LIMITED_COUNT} "
                         f"delivered\n{hub.log()}")
        time.sleep(1)  # a late duplicate would arrive now
        dead = httpx.get(f"{hub.url}/api/v1/deadletters", timeout=30).json()["deadletters"]
    finally:
        if detector is not None:
            detector.stop()
        hub.stop()
    requests = receiver.requests
    limited = sum(1 for r in requests if r.status == 429)
    first = requests[0].received_at
    resumed = min(r.received_at for r in requests if r.ok)
    tally = Tally.of(receiver)
    print(f"\n{LIMITED_COUNT} alerts during {LIMITED_S:.0f} s of 429 (Retry-After: "
          f"{RETRY_AFTER}): {limited} requests answered 429; first delivery "
          f"{resumed - first:.1f} s after the first attempt, the last "
          f"{max(r.received_at for r in requests) - limit_ends:.1f} s after the limit ended; "
          f"{tally.duplicates} delivered twice, {len(dead)} dead-lettered")
    # 0 lost: every alert delivered, once; none given up.
    assert sorted(tally.arrived["limited"]) == list(range(LIMITED_COUNT))
    assert tally.duplicates == 0
    assert dead == []
    # Not hammered: told to wait RETRY_AFTER, each of the output's WORKERS sends at most once
    # per RETRY_AFTER, however many alerts wait (one more period for the edges).
    assert limited <= WORKERS * (LIMITED_S // RETRY_AFTER + 2), (
        f"{limited} requests in {LIMITED_S:.0f} s to an output that asked for "
        f"{RETRY_AFTER} s between them")
