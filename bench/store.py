"""Store benchmark: the SQLite store alone, no hub, no HTTP.

    .venv/bin/python bench/store.py                    # about 2 minutes, mostly one core
    .venv/bin/python bench/store.py --events 300000 --rate 500 --seconds 60

Phases, over one fresh database file:

1. fill: ``--events`` events (no deliveries) so that indexes are deep, as in a hub that has
   run for a while; prints the rate and the file size per event.
2. throughput: accept in batches of 100 from one caller (one transaction each) and of 1 from
   50 callers (group commit), one output; then lease 100 + complete until the queue is empty.
   Per alert: wall rate, process CPU, writer-thread CPU, WAL frames written per transaction.
3. paced: ``--rate`` alerts/s, one alert per accept() (as HTTP ingest does), one output drained
   by 4 workers leasing 10 at a time (as the hub's webhook does), retention holding the table at
   ``--events``. Latency percentiles of accept(), complete() and accept->completed, WAL growth.
4. queries over the full table: stats, a page of events, a text search.

Hub-assigned uuids are UUIDv7 (time-ordered), so this uses them too. CPU figures are
``time.process_time`` (all threads) and the writer thread's own ``time.thread_time``.
It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidekick.alert import Alert, Priority
from sidekick.store.base import EventQuery
from sidekick.store.sqlite import SqliteStore

OUTPUT = "webhook"
WINDOW_S = 600.0


def uuid7() -> str:
    """RFC 9562 UUIDv7: 48-bit Unix ms, version 7, 74 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return str(uuid.UUID(int=value))


def make_alert(i: int) -> Alert:
    """A typical Falco syscall alert: about 700 bytes of JSON."""
    return Alert(
        rule=f"Read sensitive file untrusted {i % 20}",
        priority=Priority(1 + i % 8),
        time_ns=time.time_ns(),
        output_fields={
            "evt.time": time.time_ns(), "proc.name": "bash", "proc.pid": 4000 + i % 5000,
            "proc.cmdline": f"bash -c cat /etc/shadow # {i}", "proc.pname": "sshd",
            "user.name": "root", "user.uid": 0, "fd.name": "/etc/shadow",
            "container.id": "host", "k8s.ns.name": None,
            "container.image.repository": "docker.io/library/ubuntu",
        },
        output=("Sensitive file opened for reading by non-trusted program (file=/etc/shadow "
                f"gparent=systemd command=bash -c cat /etc/shadow # {i} pid={4000 + i % 5000} "
                "user=root container=host)"),
        tags=["T1555", "filesystem", "host", "mitre_credential_access"],
        hostname=f"node-{i % 10}",
        uuid=uuid7(),
    )


def wal_frames(db: Path) -> int | None:
    """mxFrame from the wal-index header: frames in the WAL since its last restart."""
    try:
        with open(f"{db}-shm", "rb") as f:
            header = f.read(20)
    except FileNotFoundError:
        return None
    return struct.unpack_from("=I", header, 16)[0] if len(header) == 20 else None


def wal_bytes(db: Path) -> int:
    try:
        return os.stat(f"{db}-wal").st_size
    except FileNotFoundError:
        return 0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def dist(values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (f"p50 {pct(ms, 50):6.2f}  p90 {pct(ms, 90):6.2f}  p99 {pct(ms, 99):6.2f}  "
            f"p99.9 {pct(ms, 99.9):6.2f}  max {max(ms, default=float('nan')):7.2f} ms  "
            f"(n={len(ms)})")


async def writer_cpu(store: SqliteStore) -> float:
    return await store._run(time.thread_time)


def checkpoints(store: SqliteStore) -> str:
    stats: Any = getattr(store, "checkpoint_stats", None)  # absent before the checkpointer
    if stats is None:
        return "checkpoints: on the writer (wal_autocheckpoint)"
    s = stats()
    mean = s.writer_held_total_s / s.restarts * 1000 if s.restarts else 0.0
    return (f"checkpoints: {s.passive} passive (max {s.passive_max_s * 1000:.0f} ms), "
            f"{s.restarts} restarts ({s.truncates} truncate, {s.restart_busy} busy), writer "
            f"held mean {mean:.1f} max {s.writer_held_max_s * 1000:.1f} "
            f"total {s.writer_held_total_s * 1000:.0f} ms")


async def fill(store: SqliteStore, path: Path, count: int) -> None:
    wal_max = 0
    start, cpu = time.perf_counter(), time.process_time()
    for base in range(0, count, 500):
        batch = [(make_alert(base + i), []) for i in range(min(500, count - base))]
        await store.accept(batch, WINDOW_S)
        if base % 5000 == 0:
            wal_max = max(wal_max, wal_bytes(path))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"fill: {count:,} events in {wall:.1f} s: {count / wall:,.0f}/s, "
          f"{cpu / count * 1e6:.1f} us CPU/event; db {os.stat(path).st_size / count:.0f} "
          f"B/event; WAL max {wal_max / 2**20:.0f} MiB")
    print(f"  {checkpoints(store)}")


async def throughput(store: SqliteStore, path: Path, count: int) -> None:
    for batch_size, callers in ((100, 1), (1, 50)):
        alerts = [make_alert(i) for i in range(count)]
        frames: list[int] = []

        async def caller(k: int, alerts: list[Alert] = alerts, batch_size: int = batch_size,
                         callers: int = callers, frames: list[int] = frames) -> None:
            mine = alerts[k::callers]
            for j in range(0, len(mine), batch_size):
                before = wal_frames(path) if callers == 1 else None
                await store.accept([(a, [OUTPUT]) for a in mine[j:j + batch_size]], WINDOW_S)
                after = wal_frames(path) if callers == 1 else None
                if before is not None and after is not None:
                    frames.append(after - before if after >= before else after)

        wcpu, cpu, start = await writer_cpu(store), time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        wall = time.perf_counter() - start
        cpu, wcpu = time.process_time() - cpu, await writer_cpu(store) - wcpu
        extra = f", WAL frames/txn median {statistics.median(frames):.0f}" if frames else ""
        print(f"accept {batch_size:>3} x {callers:>2} callers: {count / wall:8,.0f} alerts/s, "
              f"CPU {cpu / count * 1e6:5.1f} us/alert (writer thread {wcpu / count * 1e6:5.1f})"
              f"{extra}")

    frames = []
    done = 0
    wcpu, cpu, start = await writer_cpu(store), time.process_time(), time.perf_counter()
    while True:
        before = wal_frames(path)
        leased = await store.lease(OUTPUT, 100, 60, 0)
        if not leased:
            break
        await store.complete(leased)
        after = wal_frames(path)
        if before is not None and after is not None:
            frames.append(after - before if after >= before else after)
        done += len(leased)
    wall = time.perf_counter() - start
    cpu, wcpu = time.process_time() - cpu, await writer_cpu(store) - wcpu
    print(f"lease 100 + complete: {done / wall:8,.0f} deliveries/s, CPU {cpu / done * 1e6:5.1f} "
          f"us/delivery (writer thread {wcpu / done * 1e6:5.1f}), WAL frames per lease+complete "
          f"median {statistics.median(frames):.0f}")


async def paced(store: SqliteStore, path: Path, rate: float, seconds: float,
                keep: int) -> None:
    loop = asyncio.get_running_loop()
    accept_lat: list[float] = []
    complete_lat: list[float] = []
    e2e: list[float] = []
    sent_at: dict[str, float] = {}
    delivered = 0
    stop = asyncio.Event()
    wal_max = [0, 0]  # bytes, frames

    async def send(alert: Alert) -> None:
        t0 = loop.time()
        sent_at[alert.uuid] = t0
        await store.accept([(alert, [OUTPUT])], WINDOW_S)
        accept_lat.append(loop.time() - t0)

    async def worker() -> None:
        nonlocal delivered
        while not stop.is_set():
            batch = await store.lease(OUTPUT, 10, 30, 0.5)
            if not batch:
                continue
            await asyncio.sleep(0.002)  # the send itself: a fast local webhook
            t0 = loop.time()
            await store.complete(batch)
            t1 = loop.time()
            complete_lat.append(t1 - t0)
            for d in batch:
                e2e.append(t1 - sent_at.pop(d.alert.uuid))
            delivered += len(batch)

    async def sampler() -> None:
        while not stop.is_set():
            wal_max[0] = max(wal_max[0], wal_bytes(path))
            wal_max[1] = max(wal_max[1], wal_frames(path) or 0)
            await asyncio.sleep(0.05)

    async def retention() -> None:
        while not stop.is_set():
            await asyncio.sleep(10)
            await store.enforce_retention(7 * 86400, keep)

    helpers = [asyncio.create_task(c) for c in
               (*(worker() for _ in range(4)), sampler(), retention())]
    sends: set[asyncio.Task[None]] = set()
    wcpu, cpu = await writer_cpu(store), time.process_time()
    start = loop.time()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(make_alert(i)))
        sends.add(task)
        task.add_done_callback(sends.discard)
    await asyncio.gather(*sends)
    while delivered < n and loop.time() < start + seconds + 30:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*helpers)
    cpu, wcpu = time.process_time() - cpu, await writer_cpu(store) - wcpu
    print(f"paced {rate:.0f}/s for {seconds:.0f} s, 1 alert per accept, 4 workers x lease 10:")
    print(f"  accept()            {dist(accept_lat)}")
    print(f"  complete()          {dist(complete_lat)}")
    print(f"  accept->completed   {dist(e2e)}")
    print(f"  CPU {cpu / n * 1e6:.0f} us/alert (writer thread {wcpu / n * 1e6:.0f}); "
          f"WAL max {wal_max[0] / 2**20:.1f} MiB, {wal_max[1]:,} frames; delivered {delivered:,}")
    print(f"  {checkpoints(store)} (since open)")


async def queries(store: SqliteStore, path: Path) -> None:
    total = (await store.stats(EventQuery(), 86400)).total
    hour = time.time_ns() - 3600 * 10**9
    cases: list[tuple[str, Any]] = [
        ("stats, last hour, 60 s buckets", lambda: store.stats(EventQuery(since_ns=hour), 60)),
        ("stats, one rule", lambda: store.stats(
            EventQuery(rules=["Read sensitive file untrusted 3"]), 3600)),
        ("stats, min priority error", lambda: store.stats(
            EventQuery(min_priority=Priority.ERROR), 3600)),
        ("events, first page of 100", lambda: store.events(EventQuery(limit=100))),
        ("events, text hit 'shadow # 12345'", lambda: store.events(
            EventQuery(text="shadow # 12345", limit=100))),
        ("events, text miss 'no such text'", lambda: store.events(
            EventQuery(text="no such text", limit=100))),
    ]
    print(f"queries over {total:,} events (best of 3, CPU of the best):")
    for name, run in cases:
        best = (float("inf"), 0.0)
        for _ in range(3):
            cpu, start = time.process_time(), time.perf_counter()
            await run()
            best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
        print(f"  {name:36} {best[0] * 1000:8.1f} ms  (CPU {best[1] * 1000:.1f} ms)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="events to fill first")
    parser.add_argument("--count", type=int, default=20_000, help="alerts per throughput run")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--dir", help="where to put the database (default: a temp dir)")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: "
                        "throughput,paced,queries")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as tmp:
        path = Path(tmp) / "lanner.db"
        store = SqliteStore(path)
        await store.open()
        try:
            await fill(store, path, args.events)
            if "throughput" not in skip:
                await throughput(store, path, args.count)
            if "paced" not in skip:
                await paced(store, path, args.rate, args.seconds, args.events)
            if "queries" not in skip:
                await queries(store, path)
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
