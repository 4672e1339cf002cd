"""SQLite specifics: what accept() acknowledged survives kill -9; leases of a previous process
are released on open; text search is exactly base.search_text, awkward alerts included; the WAL
is checkpointed off the commit path and does not grow without bound; a throughput sanity run."""

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

import pytest

from sidekick.alert import Alert, Priority, now_ns
from sidekick.store import sqlite_checkpoint
from sidekick.store.base import EventQuery, search_text
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


async def test_reopen_releases_leases_but_not_retries(tmp_path: Path) -> None:
    """One file has one owner: a lease still running at open was taken by a process that is
    gone, so it is due at once; a retry scheduled for later keeps its time."""
    path = tmp_path / "lanner.db"
    alerts = [_alert(i) for i in range(3)]
    first = SqliteStore(path)
    await first.open()
    try:
        assert all(await first.accept([(a, ["slack"]) for a in alerts], 600))
        leased = await first.lease("slack", 10, 600, 0)  # a 10-minute lease
        assert [d.alert.uuid for d in leased] == [a.uuid for a in alerts]
        await first.retry(leased[1], now_ns() + 60 * 10**9, "HTTP 429, Retry-After: 60")
        # leased[0] and leased[2] are neither completed nor retried: the process stops here
    finally:
        await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        again = await second.lease("slack", 10, 30, 0)
        assert [d.alert.uuid for d in again] == [alerts[0].uuid, alerts[2].uuid]
        assert [d.attempts for d in again] == [0, 0]  # a released lease is not a failed attempt
        assert [d.accepted_ns for d in again] == [leased[0].accepted_ns, leased[2].accepted_ns]
        assert await second.lease("slack", 10, 30, 0) == []  # the retry is still 60 s ahead
        assert (await second.queue_stats(["slack"]))["slack"].pending == 3
    finally:
        await second.close()

    third = SqliteStore(path)  # the second process's own leases are released in turn
    await third.open()
    try:
        assert [d.alert.uuid for d in await third.lease("slack", 10, 30, 0)] == [
            alerts[0].uuid, alerts[2].uuid]
    finally:
        await third.close()


async def test_database_from_before_leased_until(tmp_path: Path) -> None:
    path = tmp_path / "lanner.db"
    store = SqliteStore(path)
    await store.open()
    await store.accept([(_alert(0), ["slack"])], 600)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE deliveries DROP COLUMN leased_until")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        [d] = await store.lease("slack", 10, 600, 0)
    finally:
        await store.close()
    store = SqliteStore(path)
    await store.open()
    try:
        assert [x.id for x in await store.lease("slack", 10, 30, 0)] == [d.id]
    finally:
        await store.close()


# Alerts whose JSON differs from their search text (non-ASCII, escapes, floats JSON writes
# differently, separators in values) and plain ones: a search finds exactly what search_text
# contains, whatever an optimisation of the search column does (a JSON search must not drift).
TRICKY_FIELDS: list[tuple[str, str, dict]] = [
    ("plain", "Rule plain", {"proc.name": "bash", "n": 42, "ok": True, "z": None}),
    ("accents", "Règle É", {"user.name": "Émile", "k": "KELVIN \u212a sign"}),
    ("dotted", "Rule I", {"name": "\u0130stanbul"}),  # lowercases to i + combining dot
    ("quotes", "Rule q", {"cmd": 'sh -c "echo hi"', "path": "C:\\temp\\x"}),
    ("controls", "Rule c", {"out": "line1\nline2\ttab", "sep": "a\x1fb"}),
    ("floats", "Rule f", {"small": 1e-05, "tiny": 1.5e-07, "big": 1e16, "plain": 2.5}),
    ("inf", "Rule inf", {"x": float("inf")}),
    ("lists", "Rule l", {"args": ["-o", "Wget-Target", 7, None, False], "e": []}),
    ("pct", "Rule 100%", {"like": "50% off_sale", "under": "a_b"}),
]
NEEDLES = [
    "bash", "BASH", "42", "true", "false", "none", "null", "priority", "uuid", "output_fields",
    "É", "é", "émile", "règle", "\u212a", "k", "kelvin", "i\u0307", "\u0130", "istanbul",
    '"echo', 'echo hi"', "\\temp", "c:\\", "\n", "line1\nline2", "\t", "a\x1fb", "\x1f",
    "sh\x1f", "1e-05", "0.00001", "e-07", "1.5e-7", "1e+16", "2.5", "inf", "wget-t", "-o",
    "%", "_", "50%", "off_sale", "a_b", "100%", "rule", "rule plain\x1fbash", "ash\x1f42",
]


async def test_text_search_is_exactly_search_text(tmp_path: Path) -> None:
    alerts = [
        Alert(rule=rule, priority=Priority.WARNING, time_ns=1_700_000_000 * 10**9 + i,
              output_fields=fields, output=f"{name} output {i}", uuid=f"t-{name}")
        for i, (name, rule, fields) in enumerate(TRICKY_FIELDS)
    ]
    store = SqliteStore(tmp_path / "lanner.db")
    await store.open()
    try:
        assert all(await store.accept([(a, []) for a in alerts], 600))
        for needle in NEEDLES:
            want = sorted(a.uuid for a in alerts
                          if needle.lower() in search_text(a.output, a.rule, a.output_fields))
            page = await store.events(EventQuery(text=needle, limit=100))
            assert sorted(a.uuid for a in page.events) == want, needle
            assert (await store.stats(EventQuery(text=needle), 3600)).total == len(want), needle
        long = "plain output 0" + "x" * 60_000  # longer than a LIKE pattern may be
        assert (await store.events(EventQuery(text=long))).events == []
    finally:
        await store.close()


async def test_wal_is_checkpointed_and_restarted_off_the_commit_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_checkpoint, "_CHECKPOINT_EVERY_S", 0.05)
    monkeypatch.setattr(sqlite_checkpoint, "_WAL_RESTART_BYTES", 2 * 2**20)
    monkeypatch.setattr(sqlite_checkpoint, "_WAL_TRUNCATE_BYTES", 3 * 2**20)
    path = tmp_path / "lanner.db"
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store._run(
            lambda: store._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        deadline = time.monotonic() + 30
        i = 0
        while store.checkpoint_stats().restarts < 3 and time.monotonic() < deadline:
            await store.accept([(_alert(i + k), ["slack"]) for k in range(50)], 600)
            i += 50
        stats = store.checkpoint_stats()
        assert stats.restarts >= 3, stats  # each one: the next commit wrote from the WAL's start
        assert (await store.queue_stats(["slack"]))["slack"].pending == i
        # once ingest pauses, a WAL file larger than _WAL_TRUNCATE_BYTES is truncated
        await store.accept([(_alert(i + k), ["slack"]) for k in range(2000)], 600)
        while os.stat(f"{path}-wal").st_size > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert os.stat(f"{path}-wal").st_size == 0
        assert store.checkpoint_stats().truncates >= 1
    finally:
        await store.close()
    assert not os.path.exists(f"{path}-wal") or os.stat(f"{path}-wal").st_size == 0


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
