"""End-to-end benchmark: `lanner detect` -> gRPC -> two hub replicas on one Redis -> a sink.

    .venv/bin/python bench/e2e.py                     # about 2 minutes
    .venv/bin/python bench/e2e.py --step-seconds 20 --latency-seconds 60   # steadier figures

Figures, for two replicas and, as the baseline measured in the same run, for one:
- the highest alert rate sustained with 0 loss: the rate steps up (each step a fresh detector,
  ``--step-seconds`` long) until a step fails; a step passes when every alert reached the sink
  exactly once (the publisher's own reports of dropped alerts would count as a failure too)
  and the p99 latency stayed under ``--max-p99`` (a queue growing through the step exceeds it;
  the step's own backlog would otherwise hide in the drain time);
- p50/p99 latency from each alert's event time to its arrival at the sink, at 500 alerts/s.

The detector is a real `lanner detect --source records:FIFO --replay-rate R --output
grpc://a,b` process with the default rules. Its recording is written live into a FIFO by this
bench: `cat` reading users' SSH private keys, one "Credential file read" alert per key, each
event stamped with the time it is written, as the kernel stamps a live event (a recording made
beforehand would carry stale times and make the latency meaningless). ``--replay-rate`` sets
the replay's batches (10 ms worth of records); the writer sets the pace. The sink is a bare
ASGI server in a child process; both replicas deliver to it through their webhook output. The
publisher streams to one replica at a time; the other takes its share of the deliveries from
the Redis queue. Everything runs on loopback and is stopped at the end, also on errors and
Ctrl-C. It prints figures and ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hub import cpu_seconds, serve_http, stop  # noqa: E402
from detector.publish_buffer import DROPPED_RULE  # noqa: E402
from sidekick.alert import parse_time_ns  # noqa: E402
from tests.hubproc import HubProcess  # noqa: E402
from tests.support import RedisServer, free_port, wait_port  # noqa: E402

RULES = REPO / "rules" / "lanner_rules.yaml"
WEBHOOK = {"maxconcurrentrequests": 4, "batchsize": 10}  # as bench/hub.py: a busy hub's output
LATENCY_RATE = 500  # alerts/s
LADDER = (1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000, 12_000, 16_000)
TICK = 0.01  # the writer writes what is due every TICK seconds, as a ring buffer is read
RECORDS_PER_ALERT = 2  # openat + close
KEY = re.compile(rb"/home/u(\d+)/\.ssh/id_rsa")


# -- child process: the sink --------------------------------------------------------------------

def serve_sink(port: int) -> None:
    """POST: one alert (the webhook's body); noted as (sequence number from its key's path,
    uuid, ns from its event time to now). GET /take?from=K: the notes from the K-th on, and
    the "alerts dropped" reports."""
    notes: list[tuple[int, str, int]] = []
    reports: list[Any] = []

    def handle(path: str, query: bytes, body: bytes) -> bytes:
        arrived = time.time_ns()
        if path == "/take":
            start = int(query.decode().partition("=")[2] or 0)
            return orjson.dumps({"notes": notes[start:], "reports": reports})
        alert = orjson.loads(body)
        if alert["rule"] == DROPPED_RULE:
            reports.append(alert["output_fields"])
        else:
            seq = int(KEY.search(alert["output_fields"]["fd.name"].encode())[1])
            notes.append((seq, alert["uuid"], arrived - parse_time_ns(alert["time"])))
        return b"{}"

    serve_http(port, handle)


# -- the bench process --------------------------------------------------------------------------

_EXECVE = (b'{"kind":"execve","time_ns":%d,"pid":700,"tid":700,"uid":0,"gid":0,"comm":"cat",'
           b'"cgroup_id":0,"res":0,"args":{"filename":"/usr/bin/cat","argv":["cat"]}}\n')
_KEY_READ = (b'{"kind":"openat","time_ns":%d,"pid":700,"tid":700,"uid":0,"gid":0,"comm":"cat",'
             b'"cgroup_id":0,"res":3,"args":{"dirfd":-100,"flags":0,"mode":0,"fd":3,'
             b'"name":"/home/u%d/.ssh/id_rsa"}}\n'
             b'{"kind":"close","time_ns":%d,"pid":700,"tid":700,"uid":0,"gid":0,"comm":"cat",'
             b'"cgroup_id":0,"res":0,"args":{"fd":3}}\n')


def open_writer(fifo: Path, detector: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The FIFO's write end, once the detector opened it for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO or detector.poll() is not None \
                    or time.monotonic() > deadline:
                raise RuntimeError(f"the detector did not open its source ({exc})") from None
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)  # a full pipe is the detector falling behind: wait for it
        return fd


def write_events(fd: int, first: int, rate: int, seconds: float) -> tuple[int, float]:
    """Key reads ``first``.. at ``rate``/s for ``seconds``, each stamped with the time it is
    written, then EOF. Returns how many, and the seconds it took (longer than asked if the
    detector could not keep up)."""
    count = int(rate * seconds)
    os.write(fd, _EXECVE % time.time_ns())
    start = time.monotonic()
    done = 0
    while done < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        now = time.time_ns()
        os.write(fd, b"".join(_KEY_READ % (now, first + n, now)
                              for n in range(done, due)))
        done = due
        time.sleep(max(TICK, start + done / rate - time.monotonic()))
    elapsed = time.monotonic() - start
    os.close(fd)
    return count, elapsed


def quantile(values: list[int], q: float) -> float:
    """In seconds, from ns."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e9 if ordered else float("nan")


@dataclass
class Step:
    rate: int
    sent: int
    write_rate: float  # what the writer achieved
    arrived: int  # distinct alerts at the sink
    duplicates: int
    reported_drops: int  # by the publisher, in its "alerts dropped" alerts
    p50: float
    p99: float
    max: float
    passed: bool


class Pipeline:
    """Redis, the sink and ``replicas`` hubs; ``run`` starts a detector for each step."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, redis: RedisServer,
                 replicas: int, max_p99: float) -> None:
        self.workdir, self.replicas, self.max_p99 = workdir, replicas, max_p99
        self.name = f"{replicas} replica{'s' * (replicas > 1)}"
        redis.flush()
        port = free_port()
        self.sink_url = f"http://127.0.0.1:{port}"
        self.sink = subprocess.Popen([sys.executable, __file__, "sink", str(port)],
                                     stdout=(workdir / f"sink-{replicas}.log").open("ab"),
                                     stderr=subprocess.STDOUT)
        stack.callback(stop, self.sink)
        wait_port(port, proc=self.sink)
        config = {"store": "redis", "redis": {"url": redis.url}, "delivery": {"drain": "2s"},
                  "webhook": {"address": f"{self.sink_url}/", **WEBHOOK}}
        self.hubs = []
        for n in range(replicas):
            hub = HubProcess(workdir, config, name=f"hub{replicas}-{n}", grpc=True)
            stack.callback(stop, hub)
            self.hubs.append(hub.start())
        self.targets = ",".join(f"127.0.0.1:{h.grpcport}" for h in self.hubs)
        self.next_seq = 0
        self.taken = 0  # sink notes already read
        self.reports = 0
        (workdir / "no-proc").mkdir(exist_ok=True)

    def run(self, rate: int, seconds: float, drain: float) -> Step:
        fifo = self.workdir / f"events-{self.replicas}-{rate}.fifo"
        os.mkfifo(fifo)
        err = self.workdir / f"detect-{self.replicas}-{rate}.err"
        with err.open("wb") as stderr:
            detector = subprocess.Popen(
                [sys.executable, "-m", "sidekick.cli", "detect", "--rules", str(RULES),
                 "--source", f"records:{fifo}",
                 "--replay-rate", str(rate * RECORDS_PER_ALERT),
                 "--output", f"grpc://{self.targets}",
                 "--proc-root", str(self.workdir / "no-proc"),
                 "--runtime-socket", str(self.workdir / "none.sock")],
                stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        try:
            first = self.next_seq
            sent, elapsed = write_events(open_writer(fifo, detector), first, rate, seconds)
            self.next_seq += sent
            detector.wait(timeout=60)  # it delivers what is left to the hub, then exits
        finally:
            stop(detector)
        if detector.returncode != 0:
            raise RuntimeError(f"lanner detect failed: {err.read_text()}")
        seqs: dict[int, int] = {}  # this step's alerts: how many times each arrived
        latencies: list[int] = []
        drops = 0
        deadline = time.monotonic() + drain
        while len(seqs) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            taken = httpx.get(f"{self.sink_url}/take", params={"from": self.taken},
                              timeout=30).json()
            self.taken += len(taken["notes"])
            for seq, _, latency in taken["notes"]:
                if first <= seq < first + sent:  # not a straggler of an earlier step
                    seqs[seq] = seqs.get(seq, 0) + 1
                    latencies.append(latency)
            drops += sum(r["lanner.dropped"] for r in taken["reports"][self.reports:])
            self.reports = len(taken["reports"])
        duplicates = sum(n - 1 for n in seqs.values())
        p99 = quantile(latencies, 0.99)
        return Step(rate, sent, sent / elapsed, len(seqs), duplicates, drops,
                    quantile(latencies, 0.5), p99, max(latencies, default=0) / 1e9,
                    len(seqs) == sent and not drops and not duplicates
                    and p99 <= self.max_p99 and sent / elapsed >= 0.98 * rate)


def show(name: str, step: Step) -> None:
    print(f"   {name} {step.rate:>6}/s: {'pass' if step.passed else 'FAIL'}  "
          f"{step.arrived}/{step.sent} arrived, {step.duplicates} twice, "
          f"{step.reported_drops} reported dropped; written at {step.write_rate:,.0f}/s; "
          f"latency p50 {step.p50 * 1e3:.0f} ms, p99 {step.p99 * 1e3:.0f} ms, "
          f"max {step.max * 1e3:.0f} ms", flush=True)


def measure(pipeline: Pipeline, args: argparse.Namespace) -> dict[str, Any]:
    print(f"-- {pipeline.name} on one Redis", flush=True)
    started, (machine, ours) = time.monotonic(), cpu_seconds()
    latency = pipeline.run(LATENCY_RATE, args.latency_seconds, args.drain)
    show("latency", latency)
    best = latency if latency.passed else None
    for rate in LADDER:
        if best is None or rate > args.max_rate:
            break
        step = pipeline.run(rate, args.step_seconds, args.drain)
        show("step", step)
        if not step.passed:
            # once between the last rate that passed and this one: the ladder is coarse
            middle = (best.rate + rate) // 200 * 100
            if middle > best.rate:
                step = pipeline.run(middle, args.step_seconds, args.drain)
                show("step", step)
                best = step if step.passed else best
            break
        best = step
    (machine2, ours2), elapsed = cpu_seconds(), time.monotonic() - started
    others = max(0.0, machine2 - machine - (ours2 - ours)) / elapsed
    return {"latency": latency, "sustained": best, "others_cpu": others}


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    two, one = results["two"], results["one"]

    def rate(r: dict[str, Any]) -> float:
        return r["sustained"].rate if r["sustained"] else 0.0

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    rows = [("sustained alerts/s, 0 loss", f"{rate(two):,.0f}", f"{rate(one):,.0f}",
             ratio(rate(two), rate(one)))]
    for q in ("p50", "p99"):
        a, b = getattr(two["latency"], q), getattr(one["latency"], q)
        rows.append((f"latency {q} at {LATENCY_RATE}/s", f"{a * 1e3:.0f} ms", f"{b * 1e3:.0f} ms",
                     ratio(a, b)))
    head = ("", "2 replicas", "1 replica (baseline)", "ratio")
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(4)]
    print()
    for row in (head, *rows):
        print("  ".join(cell.rjust(w) if i else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
    print(f"(sustained: the highest step of {args.step_seconds:.0f} s with every alert delivered "
          f"once and p99 <= {args.max_p99 * 1e3:.0f} ms.\n latency: over "
          f"{args.latency_seconds:.0f} s. Webhook {WEBHOOK} per replica; {os.cpu_count()} cores "
          "shared by everything.)")
    others = {name: r["others_cpu"] for name, r in (("2 replicas", two), ("1 replica", one))}
    print(f"CPU used by other processes than this bench's, in cores of {os.cpu_count()}: "
          + ", ".join(f"{name} {cores:.2f}" for name, cores in others.items()))
    if max(others.values()) > 0.2:
        print("WARNING: the machine was busy with other work: the figures above are low.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=6.0,
                        help="length of each rate step (default 6)")
    parser.add_argument("--latency-seconds", type=float, default=15.0,
                        help=f"length of the latency measure at {LATENCY_RATE}/s (default 15)")
    parser.add_argument("--max-rate", type=int, default=LADDER[-1],
                        help=f"highest rate tried (default {LADDER[-1]})")
    parser.add_argument("--max-p99", type=float, default=0.5,
                        help="seconds: a step with a higher p99 latency is not sustained "
                             "(default 0.5)")
    parser.add_argument("--drain", type=float, default=10.0,
                        help="seconds to wait after a step for alerts still on their way "
                             "(default 10); one not there by then is counted lost")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what we started
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lanner-e2e-")))
        redis = RedisServer()
        stack.callback(redis.stop)
        for key, replicas in (("two", 2), ("one", 1)):
            with contextlib.ExitStack() as own:
                results[key] = measure(Pipeline(own, workdir, redis, replicas, args.max_p99),
                                       args)
    report(results, args)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:  # the bench's own child process
        serve_sink(int(sys.argv[2]))
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:  # the ExitStacks have stopped everything by now
            sys.exit("interrupted")
