"""The SQLite store's delivery queue: one row per alert and output until it is delivered or
buried as a dead letter, each step recorded for the UI. A mixin of ``SqliteStore``: writes run
in its writer's transactions, reads on its reader thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sidekick.alert import Alert
from sidekick.store import sqlite_schema as sql
from sidekick.store import sqlite_triage as records_sql
from sidekick.store.base import DeadLetter, Delivery, QueueStats, log_uuid


def _record(delivery: Delivery, at_ns: int, state: str, attempts: int = 0,
            next_ns: int | None = None, reason: str = "", dead_id: str = "") -> tuple[Any, ...]:
    uuid = log_uuid(delivery.alert)
    return records_sql.record_row(uuid, delivery.output, at_ns, state, attempts, next_ns, reason,
                                  dead_id, summary=uuid != delivery.alert.uuid)


class SqliteQueue:
    # Provided by SqliteStore.
    _run: Callable[..., Any]
    _read: Callable[..., Any]
    _txn: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _db: Callable[[], sqlite3.Connection]
    _wake: Callable[[str], None]
    _wakers: dict[str, asyncio.Event]

    async def lease(self, output: str, limit: int, lease_s: float, wait_s: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            wake = self._wakers.setdefault(output, asyncio.Event())
            leased, next_due_ns = await self._run(
                self._lease_sync, output, limit, int(lease_s * 1e9)
            )
            if leased:
                return leased
            timeout = deadline - loop.time()
            if timeout <= 0:
                return []
            if next_due_ns is not None:  # a retry or an expiring lease becomes due
                timeout = min(timeout, max(0.0, (next_due_ns - time.time_ns()) / 1e9))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()

    def _lease_sync(
        self, output: str, limit: int, lease_ns: int
    ) -> tuple[list[Delivery], int | None]:
        now = time.time_ns()
        conn = self._db()
        # Read first, outside a transaction: every accept wakes all the output's waiting
        # workers and most find nothing. This thread is the only writer, so what it reads here
        # is still due when it updates it below.
        rows = conn.execute(
            "SELECT id, alert, attempts, accepted_ns FROM deliveries "
            "WHERE output = ? AND next_at <= ? ORDER BY next_at, id LIMIT ?",
            (output, now, limit),
        ).fetchall()
        if not rows:
            next_due = conn.execute(
                "SELECT min(next_at) FROM deliveries WHERE output = ?", (output,)
            ).fetchone()[0]
            return [], next_due
        with self._txn() as conn:
            until = now + lease_ns
            for chunk in sql.chunks([r[0] for r in rows], sql.IN_CHUNK):
                conn.execute(
                    "UPDATE deliveries SET next_at = ?, leased_until = ? "
                    f"WHERE id IN ({sql.marks(len(chunk))})",
                    [until, until, *chunk],
                )
        return [
            Delivery(str(id_), output, Alert.from_json(blob), attempts, accepted)
            for id_, blob, attempts, accepted in rows
        ], None

    async def complete(self, deliveries: list[Delivery]) -> None:
        ids = [int(d.id) for d in deliveries]
        if ids:
            now = time.time_ns()
            records = [_record(d, now, "delivered", d.attempts + 1) for d in deliveries]
            await self._run(self._complete_sync, ids, records)

    def _complete_sync(self, ids: list[int], records: list[tuple[Any, ...]]) -> None:
        with self._txn() as conn:
            for chunk in sql.chunks(ids, sql.IN_CHUNK):
                conn.execute(f"DELETE FROM deliveries WHERE id IN ({sql.marks(len(chunk))})", chunk)
            records_sql.record(conn, records)

    async def retry(self, delivery: Delivery, due_ns: int, error: str) -> None:
        def run() -> None:
            with self._txn() as conn:
                conn.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, next_at = ?, last_error = ?, "
                    "leased_until = NULL WHERE id = ?",
                    (due_ns, error, int(delivery.id)),
                )
                records_sql.record(conn, [_record(delivery, time.time_ns(), "retrying",
                                                  delivery.attempts + 1, due_ns, error)])

        await self._run(run)
        self._wake(delivery.output)  # waiters re-read the next due time

    async def bury(self, delivery: Delivery, reason: str) -> None:
        # The attempt that led to burial counts, as retry() counts the one that failed.
        def run() -> None:
            now = time.time_ns()
            with self._txn() as conn:
                dead = conn.execute(
                    "INSERT INTO dead_letters (output, alert, attempts, accepted_ns, dead_ns, "
                    "reason) SELECT output, alert, attempts + 1, accepted_ns, ?, ? "
                    "FROM deliveries WHERE id = ?",
                    (now, reason, int(delivery.id)),
                )
                conn.execute("DELETE FROM deliveries WHERE id = ?", (int(delivery.id),))
                if dead.rowcount:
                    records_sql.record(conn, [_record(
                        delivery, now, "dead", delivery.attempts + 1, reason=reason,
                        dead_id=str(dead.lastrowid))])

        await self._run(run)

    async def dead_letters(self, output: str | None, limit: int) -> list[DeadLetter]:
        def run(conn: sqlite3.Connection) -> list[DeadLetter]:
            cond, params = ("WHERE output = ?", [output]) if output is not None else ("", [])
            rows = conn.execute(
                "SELECT id, output, alert, attempts, accepted_ns, dead_ns, reason "
                f"FROM dead_letters {cond} ORDER BY dead_ns DESC, id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [DeadLetter(str(r[0]), r[1], Alert.from_json(r[2]), *r[3:]) for r in rows]

        return await self._read(run)

    async def redrive(self, output: str | None, ids: list[str] | None) -> int:
        conds: list[str] = []
        params: list[Any] = []
        if output is not None:
            conds.append("output = ?")
            params.append(output)
        if ids is not None:
            numeric = [int(i) for i in ids if i.isdigit()]  # ids are ours; others match nothing
            if not numeric:
                return 0
            conds.append(f"id IN ({sql.marks(len(numeric))})")
            params += numeric
        where = "WHERE " + " AND ".join(conds) if conds else ""

        def run() -> list[str]:
            now = time.time_ns()
            with self._txn() as conn:
                rows = conn.execute(
                    f"SELECT id, output, alert FROM dead_letters {where} ORDER BY id", params
                ).fetchall()
                # accepted_ns restarts: a redriven alert gets a full retry age, not an instant
                # re-burial for being old; attempts restart for the same reason.
                conn.executemany(sql.INSERT_DELIVERY, [(o, a, now, now) for _, o, a in rows])
                records_sql.record(conn, [
                    _record(Delivery(str(i), o, Alert.from_json(a), 0, now), now, "redriven")
                    for i, o, a in rows])
                for chunk in sql.chunks([r[0] for r in rows], sql.IN_CHUNK):
                    conn.execute(f"DELETE FROM dead_letters WHERE id IN ({sql.marks(len(chunk))})",
                                 chunk)
            return [r[1] for r in rows]

        moved = await self._run(run)
        for name in set(moved):
            self._wake(name)
        return len(moved)

    async def queue_stats(self, outputs: list[str]) -> dict[str, QueueStats]:
        def run(conn: sqlite3.Connection) -> dict[str, QueueStats]:
            out = {}
            for name in outputs:
                pending, oldest = conn.execute(
                    "SELECT count(*), min(accepted_ns) FROM deliveries WHERE output = ?", (name,)
                ).fetchone()
                (dead,) = conn.execute(
                    "SELECT count(*) FROM dead_letters WHERE output = ?", (name,)
                ).fetchone()
                out[name] = QueueStats(pending, oldest, dead)
            return out

        return await self._read(run)
