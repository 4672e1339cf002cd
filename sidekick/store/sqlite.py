"""The embedded store: one SQLite file, for a single hub process.

Writes run on one dedicated thread that owns the writing connection, so the event loop never
blocks on disk and writers never contend. Accepts are group-committed: callers that arrive
while a transaction is being written share the next one. Queries for the API (events, stats,
dead letters, queue depths) run on a second thread with its own connection: WAL lets it read
a consistent snapshot while ingest goes on, so a slow stats query never holds up an ack.

Checkpoints (copying the WAL into the database file, with two fsyncs) run on a third thread
and connection, never inside a commit (``sqlite_checkpoint``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from sidekick.aggregation import Aggregation
from sidekick.alert import Alert
from sidekick.store import sqlite_aggregate as windows
from sidekick.store import sqlite_rules as rules_sql
from sidekick.store import sqlite_schema as sql
from sidekick.store import sqlite_triage as records_sql
from sidekick.store.base import (
    AGGREGATED,
    Ingested,
    LocalRulesDoc,
    Store,
    search_text,
)
from sidekick.store.sqlite_checkpoint import Checkpointer, CheckpointStats
from sidekick.store.sqlite_queue import SqliteQueue
from sidekick.store.sqlite_reader import Reader
from sidekick.store.sqlite_reads import SqliteReads

T = TypeVar("T")

log = logging.getLogger("lanner.store")

_PRUNE_EVERY_NS = 30 * 10**9
_RETENTION_CHUNK = 250  # events deleted per transaction (~4 ms); accepts go in between

@dataclass(slots=True)
class _Job:
    batch: list[tuple[Alert, list[str]]]
    window_ns: int
    aggregations: Mapping[str, Aggregation]
    future: asyncio.Future[Ingested]


class SqliteStore(SqliteReads, SqliteQueue, Store):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._reader = Reader(self.path, "sqlite-read")
        self._counter = Reader(self.path, "sqlite-count")
        self._checkpointer: Checkpointer | None = None
        # Held by each write transaction, and by the checkpointer while it makes the WAL start
        # over: the writer then waits on a lock (woken at once) rather than polling SQLite's
        # busy handler, and the checkpointer never waits for the writer.
        self._gate = threading.Lock()
        self._pending: list[_Job] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wakers: dict[str, asyncio.Event] = {}
        # worker-thread state: the widest dedup window seen, and when to prune tombstones
        self._max_window_ns = 0
        self._next_prune_ns = 0

    # --- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the reader thread of pages and single records."""
        return await self._reader.run(fn, *args)

    async def _count(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the reader thread of counts."""
        return await self._counter.run(fn, *args)

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        with self._gate:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (disk full, I/O error); a failed COMMIT
                # leaves the transaction open. Either way the next BEGIN must find none.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _wake(self, output: str) -> None:
        # Waiters hold the event they saw before querying; setting and dropping it wakes
        # exactly those, and the next lease() makes a fresh one.
        event = self._wakers.pop(output, None)
        if event is not None:
            event.set()

    async def open(self) -> None:
        if self._pool is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._open_sync)
            await self._reader.open()
            await self._counter.open()
            self._checkpointer = Checkpointer(self.path, self._gate)
            await self._checkpointer.start()
        except BaseException:
            await self.close()
            raise

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for pragma in sql.PRAGMAS:
                conn.execute(pragma)
            conn.executescript(sql.SCHEMA)
            conn.executescript(windows.SCHEMA)
            conn.executescript(records_sql.SCHEMA)
            conn.executescript(rules_sql.SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
            if "leased_until" not in columns:  # a database from before leased_until
                conn.execute("ALTER TABLE deliveries ADD COLUMN leased_until INTEGER")
            row = conn.execute("SELECT value FROM meta WHERE key = 'dedup_window_ns'").fetchone()
            self._max_window_ns = row[0] if row else 0
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._release_leases()

    def _release_leases(self) -> None:
        """Make deliveries leased by an earlier process (crashed, or stopped mid-send) due now.

        One file has one owner process, so a lease still running at open belongs to no live
        worker: waiting for it to expire would only delay those alerts. A retry scheduled for
        later (Retry-After, backoff) is not a lease and keeps its time. Released deliveries keep
        their accept order at the head of the queue; their attempts do not change.
        """
        now = time.time_ns()
        with self._txn() as conn:
            # distinct outputs by index jumps, so that a large backlog is not scanned
            outputs = [row[0] for row in conn.execute(
                "WITH RECURSIVE o(name) AS (SELECT min(output) FROM deliveries UNION ALL "
                "SELECT (SELECT min(output) FROM deliveries WHERE output > o.name) FROM o "
                "WHERE o.name IS NOT NULL) SELECT name FROM o WHERE name IS NOT NULL")]
            released = 0
            for output in outputs:
                released += conn.execute(
                    "UPDATE deliveries SET next_at = min(accepted_ns, ?), leased_until = NULL "
                    "WHERE output = ? AND next_at > ? AND leased_until IS NOT NULL",
                    (now, output, now),
                ).rowcount
        if released:
            log.info("%d delivery lease(s) of a previous run released", released)

    async def close(self) -> None:
        if self._pool is None:
            return
        while self._flusher is not None:  # acknowledged-or-failed, never dropped
            await asyncio.wait({self._flusher})
        with contextlib.suppress(Exception):
            await self._run(self._close_sync)
        self._pool.shutdown(wait=True)
        self._pool = None
        if self._checkpointer is not None:
            # no writer any more: the checkpointer empties the WAL as it closes
            await self._checkpointer.stop()
            self._checkpointer = None
        self._reader.close()
        self._counter.close()

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def checkpoint_stats(self) -> CheckpointStats:
        return self._checkpointer.stats() if self._checkpointer else CheckpointStats()

    async def ping(self) -> None:
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    # --- ingest -----------------------------------------------------------------------------

    async def ingest(
        self,
        batch: list[tuple[Alert, list[str]]],
        dedup_window_s: float,
        aggregations: Mapping[str, Aggregation],
    ) -> Ingested:
        if not batch:
            return Ingested([], {})
        for alert, _ in batch:
            if not alert.uuid:
                raise ValueError("every accepted alert needs a uuid (call ensure_uuid)")
        future: asyncio.Future[Ingested] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(batch, int(dedup_window_s * 1e9), aggregations, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                jobs, self._pending = self._pending, []
                try:
                    results, outputs = await self._run(self._write_accepts, jobs)
                except asyncio.CancelledError:
                    for job in jobs:  # the write may or may not have happened: not acked
                        job.future.cancel()
                    raise
                except Exception as exc:
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                for job, result in zip(jobs, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
                for output in outputs:
                    self._wake(output)
        finally:
            self._flusher = None

    def _write_accepts(self, jobs: list[_Job]) -> tuple[list[Ingested], set[str]]:
        now = time.time_ns()
        results = [Ingested([False] * len(job.batch), {}) for job in jobs]
        groups: dict[int, list[tuple[int, int]]] = {}  # window -> (job, item) positions
        for j, job in enumerate(jobs):
            groups.setdefault(job.window_ns, []).extend((j, i) for i in range(len(job.batch)))
        tags: list[tuple[str, int, str]] = []
        deliveries: list[tuple[str, bytes, int, int]] = []
        records: list[tuple[Any, ...]] = []
        outputs: set[str] = set()
        with self._txn() as conn:
            self._remember_window(conn, max(groups))
            for window_ns, positions in groups.items():
                cutoff = now - window_ns
                items = [(j, i, jobs[j].batch[i][0]) for j, i in positions]
                buried = self._tombstoned(conn, [a.uuid for _, _, a in items], cutoff)
                candidates = []
                rows = []
                for j, i, alert in items:
                    if alert.uuid in buried:
                        continue
                    blob = alert.to_json()
                    candidates.append((j, i, alert, blob))
                    rows.append((alert.uuid, alert.time_ns, now, int(alert.priority), alert.rule,
                                 alert.source, alert.hostname, orjson.dumps(alert.tags),
                                 search_text(alert.output, alert.rule, alert.output_fields), blob))
                fresh: set[str] = set()
                for chunk in sql.sized(rows):
                    fresh.update(r[0] for r in conn.execute(
                        sql.insert_events_sql(len(chunk)), [*sql.flat(chunk), cutoff]))
                for j, i, alert, blob in candidates:
                    if alert.uuid not in fresh:
                        continue
                    fresh.discard(alert.uuid)  # the statement stored the first copy only
                    results[j].fresh[i] = True
                    tags.extend((tag, alert.time_ns, alert.uuid) for tag in alert.tags)
                    routed = jobs[j].batch[i][1]
                    due = windows.due_now(conn, routed, jobs[j].aggregations, alert, blob, now,
                                          results[j].aggregated)
                    for name in due:
                        deliveries.append((name, blob, now, now))
                        outputs.add(name)
                    records.extend(
                        records_sql.record_row(alert.uuid, name, now, "aggregated",
                                               reason=AGGREGATED)
                        for name in dict.fromkeys(routed) if name not in due)
            for chunk in sql.sized(tags):
                conn.execute(sql.insert_tags_sql(len(chunk)), sql.flat(chunk))
            for chunk in sql.sized(deliveries):
                conn.execute(sql.insert_deliveries_sql(len(chunk)), sql.flat(chunk))
            records_sql.record(conn, records)
            if now >= self._next_prune_ns:
                conn.execute("DELETE FROM dedup_tomb WHERE accepted_ns < ?",
                             (now - self._max_window_ns,))
                self._next_prune_ns = now + _PRUNE_EVERY_NS
        return results, outputs

    def _tombstoned(self, conn: sqlite3.Connection, uuids: list[str], cutoff: int) -> set[str]:
        found: set[str] = set()
        for chunk in sql.chunks(uuids, sql.IN_CHUNK):
            found.update(r[0] for r in conn.execute(
                "SELECT uuid FROM dedup_tomb WHERE accepted_ns >= ? "
                f"AND uuid IN ({sql.marks(len(chunk))})", [cutoff, *chunk]))
        return found

    def _remember_window(self, conn: sqlite3.Connection, window_ns: int) -> None:
        # Persisted so retention after a restart still tombstones events inside the window.
        if window_ns > self._max_window_ns:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dedup_window_ns', ?)",
                         (window_ns,))
            self._max_window_ns = window_ns

    async def flush_windows(self, limit: int) -> tuple[int, dict[str, int]]:
        def run() -> tuple[int, dict[str, int]]:
            with self._txn() as conn:
                return windows.flush(conn, time.time_ns(), limit)

        closed, queued = await self._run(run)
        for name in queued:
            self._wake(name)
        return closed, queued

    # --- the local rules file -----------------------------------------------------------------

    async def local_rules(self) -> LocalRulesDoc:
        return await self._read(rules_sql.read)

    async def save_local_rules(self, expected_version: int, text: str) -> bool:
        def run() -> bool:
            with self._txn() as conn:
                return rules_sql.save(conn, expected_version, text)

        return await self._run(run)

    # --- recent events ----------------------------------------------------------------------

    async def enforce_retention(self, max_age_s: float, max_count: int) -> int:
        cutoff = time.time_ns() - int(max_age_s * 1e9)
        # event times are never negative; a cutoff below 0 (a huge max age) deletes nothing
        deleted = await self._delete_events("e.time_ns < ?", [cutoff]) if cutoff > 0 else 0
        # A read that walks max_count index entries: on the reader, not holding up the writer.
        # An event accepted after its snapshot and older than the boundary still has max_count
        # newer ones, so deleting it is right (as when accepts land between delete chunks).
        boundary = await self._count(
            lambda conn: conn.execute(
                "SELECT time_ns, uuid FROM events ORDER BY time_ns DESC, uuid DESC "
                "LIMIT 1 OFFSET ?", (max(0, max_count),)
            ).fetchone()
        )
        if boundary is not None:
            deleted += await self._delete_events("(e.time_ns, e.uuid) <= (?, ?)", list(boundary))
        return deleted

    async def _delete_events(self, cond: str, params: list[Any]) -> int:
        """Oldest first, one short transaction per chunk so ingest is never held up long."""

        def chunk() -> int:
            with self._txn() as conn:
                gone = conn.execute(
                    "DELETE FROM events WHERE rowid IN (SELECT e.rowid FROM events e "
                    f"WHERE {cond} ORDER BY e.time_ns, e.uuid LIMIT ?) RETURNING uuid, accepted_ns",
                    [*params, _RETENTION_CHUNK],
                ).fetchall()
                cutoff = time.time_ns() - self._max_window_ns
                recent = [row for row in gone if row[1] >= cutoff]
                if recent:
                    conn.executemany(
                        "INSERT OR REPLACE INTO dedup_tomb (uuid, accepted_ns) VALUES (?, ?)",
                        recent)
            return len(gone)

        total = 0
        while True:
            n = await self._run(chunk)
            total += n
            if n < _RETENTION_CHUNK:
                return total
