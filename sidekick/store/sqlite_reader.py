"""A reading connection of the SQLite store on a thread of its own.

WAL lets each reader see a consistent snapshot while the writer goes on. The store has two:
one for pages and single events, one for counts (stats, retention's boundary), so that a
stats query over a million events never holds up the next page of the events table.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sidekick.store import sqlite_schema as sql

T = TypeVar("T")


class Reader:
    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the pool's thread only

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._conn = await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in sql.READER_PRAGMAS:
            conn.execute(pragma)
        return conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the reader's thread."""
        if self._pool is None or self._conn is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, fn, self._conn, *args
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # queries in flight finish first
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
