"""SQLite specifics: what accept() acknowledged survives kill -9; a throughput sanity run."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from sidekick.alert import Alert, Priority, now_ns
from sidekick.store.base import EventQuery
from sidekick.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ["slack", "webhook"]

# Accepts alerts k-0, k-1, ... from 20 concurrent callers, in batches of 1 to 7, and prints
# "acked N" for each alert only after the accept() that carried it has returned.
WRITER = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from sidekick.alert import Alert, Priority
    from sidekick.store.sqlite import SqliteStore

    async def main():
        store = SqliteStore(Path(sys.argv[1]))
        await store.open()
        counter = iter(range(10**9))

        async def caller(n):
            size = 1 + n % 7
            while True:
                ids = [next(counter) for _ in range(size)]
                batch = [(Alert(rule="Kill test", priority=Priority.ERROR, time_ns=time.time_ns(),
                                output_fields={"n": i}, output=f"alert {i}", tags=["t"],
                                hostname="h", uuid=f"k-{i}"), ["slack", "webhook"])
                         for i in ids]
                result = await store.accept(batch, 600)
                assert all(result), result
                sys.stdout.write("".join(f"acked {i}\\n" for i in ids))
                sys.stdout.flush()

        await asyncio.gather(*(caller(n) for n in range(20)))

    asyncio.run(main())
""")


async def test_acked_alerts_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "db" / "lanner.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: set[str] = set()
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.add("k-" + line.split()[1])
        proc.send_signal(signal.SIGKILL)  # mid-write: the callers never stop on their own
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err
    acked.update("k-" + line.split()[1] for line in rest.splitlines() if line.startswith("acked"))
    assert len(acked) >= 3000, f"writer acked only {len(acked)} alerts: {err[-2000:]}"

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        stored = {a.uuid for a in (await store.events(EventQuery(limit=100_000))).events}
        assert acked <= stored, f"{len(acked - stored)} acknowledged alerts lost"
        stats = await store.queue_stats(OUTPUTS)
        for output in OUTPUTS:
            assert stats[output].pending == len(stored)
            leased = await store.lease(output, 100_000, 60, 0)
            delivered = [d.alert.uuid for d in leased]
            assert len(delivered) == len(set(delivered)) == len(stored)
            assert acked <= set(delivered), f"{output}: acknowledged deliveries lost"
        event = await store.get_event(sorted(acked)[0])
        assert event is not None and event.rule == "Kill test" and event.tags == ["t"]
    finally:
        await store.close()


def _alert(i: int) -> Alert:
    return Alert(
        rule=f"Rule {i % 20}",
        priority=Priority(1 + i % 8),
        time_ns=now_ns(),
        output_fields={"proc.name": "bash", "proc.cmdline": f"bash -c echo {i}",
                       "user.name": "root", "fd.name": "/etc/shadow"},
        output=f"Sensitive file opened for reading (user=root command=bash -c echo {i})",
        tags=["T1555", "filesystem", "mitre_credential_access"],
        hostname=f"node-{i % 10}",
        uuid=str(uuid.uuid4()),
    )


async def test_throughput_sanity(tmp_path: Path) -> None:
    """Prints accept rates (run with -s); asserts only that everything was stored."""
    store = SqliteStore(tmp_path / "lanner.db")
    await store.open()
    try:
        total = 0
        for batch, callers, count in ((100, 1, 20_000), (1, 50, 5_000)):
            alerts = [_alert(i) for i in range(count)]

            async def caller(k: int, alerts: list[Alert] = alerts, batch: int = batch,
                             callers: int = callers) -> None:
                mine = alerts[k::callers]
                for j in range(0, len(mine), batch):
                    result = await store.accept([(a, ["slack"]) for a in mine[j:j + batch]], 600)
                    assert all(result)

            start = time.perf_counter()
            await asyncio.gather(*(caller(k) for k in range(callers)))
            elapsed = time.perf_counter() - start
            total += count
            print(f"\naccept, 1 output, batches of {batch}, {callers} caller(s): "
                  f"{count / elapsed:,.0f} alerts/s")
        assert (await store.queue_stats(["slack"]))["slack"].pending == total
        assert (await store.stats(EventQuery(), 3600)).total == total
    finally:
        await store.close()
