"""The SQLite store's queries for the UI and API: pages of events, counts, triage and delivery
records. A mixin of ``SqliteStore``: pages run on its reader thread, counts on its counter
thread, triage writes in its writer's transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sidekick.alert import Alert
from sidekick.store import sqlite_schema as sql
from sidekick.store import sqlite_triage as records_sql
from sidekick.store.base import (
    DeliveryRecord,
    EventPage,
    EventQuery,
    Stats,
    Triage,
    decode_cursor,
    encode_cursor,
)


class SqliteReads:
    # Provided by SqliteStore.
    _read: Callable[..., Any]
    _count: Callable[..., Any]
    _run: Callable[..., Any]
    _txn: Callable[[], AbstractContextManager[sqlite3.Connection]]

    async def get_event(self, uuid: str) -> Alert | None:
        def run(conn: sqlite3.Connection) -> Alert | None:
            row = conn.execute("SELECT json FROM events WHERE uuid = ?", (uuid,)).fetchone()
            return Alert.from_json(row[0]) if row else None

        return await self._read(run)

    async def events(self, query: EventQuery) -> EventPage:
        if query.limit < 1:
            raise ValueError("limit must be at least 1")
        cursor = decode_cursor(query.cursor) if query.cursor else None
        return await self._read(self._events_sync, query, cursor)

    @staticmethod
    def _events_sync(
        conn: sqlite3.Connection, q: EventQuery, cursor: tuple[int, str] | None
    ) -> EventPage:
        found: dict[str, tuple[int, str, bytes]] = {}
        for text, params in sql.page_queries(q, cursor, q.limit + 1):
            for row in conn.execute(text, params):
                found[row[1]] = row  # several tag queries may find one event
        rows = sorted(found.values(), key=lambda r: (r[0], r[1]), reverse=True)
        page = rows[: q.limit]
        more = len(rows) > q.limit
        return EventPage(
            events=[Alert.from_json(r[2]) for r in page],
            next_cursor=encode_cursor(page[-1][0], page[-1][1]) if more else None,
        )

    async def stats(self, query: EventQuery, bucket_s: int) -> Stats:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        bucket_ns = int(bucket_s * 10**9)
        if query.since_ns is not None and query.until_ns is not None:
            sql.bucket_range(query.since_ns, query.until_ns - 1, bucket_ns)  # fail early
        return await self._count(self._stats_sync, query, bucket_ns)

    @staticmethod
    def _stats_sync(conn: sqlite3.Connection, q: EventQuery, bucket_ns: int) -> Stats:
        if q.has_filters():
            return sql.stats_filtered(conn, q, bucket_ns)
        return sql.stats_time_only(conn, q, bucket_ns)

    # --- triage and delivery records --------------------------------------------------------

    async def set_triage(self, uuids: list[str], triage: Triage) -> int:
        def run() -> int:
            with self._txn() as conn:
                return records_sql.set_triage(conn, uuids, triage)

        return await self._run(run) if uuids else 0

    async def triage_of(self, uuids: list[str]) -> dict[str, Triage]:
        return await self._read(records_sql.triage_of, uuids) if uuids else {}

    async def triage_history(self, uuid: str) -> list[Triage]:
        return await self._read(records_sql.triage_history, uuid)

    async def delivery_log(self, uuid: str) -> list[DeliveryRecord]:
        return await self._read(records_sql.delivery_log, uuid)
