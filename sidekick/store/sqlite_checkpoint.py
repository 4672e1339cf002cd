"""WAL checkpoints of the SQLite store, on their own thread and connection.

A checkpoint copies the WAL into the database file and fsyncs both; inside a commit (SQLite's
default, auto-checkpoint) that stalled every accept, lease and complete behind it for 30-50 ms.
Here it runs beside the writer, which only waits, briefly, when the WAL is made to start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from sidekick.store import sqlite_schema as sql

log = logging.getLogger("lanner.store")

_CHECKPOINT_EVERY_S = 1.0  # a PASSIVE checkpoint this often
_WAL_RESTART_BYTES = 64 * 2**20  # past this, the WAL is made to start over from its beginning
_CATCH_UP_FRAMES = 250  # the writer is held only for a tail this short...
_CATCH_UP_ROUNDS = 4  # ... which this many PASSIVE checkpoints in a row get down to
# Starting over reuses the WAL file, which keeps the size a burst gave it (near twice
# _WAL_RESTART_BYTES at a steady rate). A file larger than this is truncated, but only in a
# quiet round (at most _QUIET_FRAMES new frames since the previous one): a TRUNCATE holds the
# writer 40-120 ms (freeing the file's blocks), against about 6 ms for a RESTART.
_WAL_TRUNCATE_BYTES = 4 * _WAL_RESTART_BYTES
_QUIET_FRAMES = 256


@dataclass(slots=True)
class CheckpointStats:
    """What the checkpoint thread did since open (for benchmarks and diagnostics)."""

    passive: int = 0
    passive_max_s: float = 0.0
    restarts: int = 0  # RESTART or TRUNCATE checkpoints that let the WAL start over
    truncates: int = 0  # ... of which TRUNCATE (WAL file back to 0 bytes)
    restart_busy: int = 0  # ... that a reader kept from completing (retried next round)
    writer_held_max_s: float = 0.0  # longest time the writer waited for one of them
    writer_held_total_s: float = 0.0


class Checkpointer:
    """Started by the store after its writer connection exists; ``gate`` is the lock every
    write transaction holds, so that the writer waits on it (woken at once) rather than in
    SQLite's busy handler while the WAL starts over."""

    def __init__(self, path: Path, gate: threading.Lock) -> None:
        self.path = path
        self._gate = gate
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ckpt")
        self._ckpt_conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._ckpt = CheckpointStats()
        self._ckpt_frames = 0  # the WAL's frame count at the previous round

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ckpt_conn = await loop.run_in_executor(self._pool, self._open_checkpointer)
        self._task = asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpoint")

    async def stop(self) -> None:
        """After the writer is closed: empty the WAL and close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ckpt_conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._close_checkpointer
                )
        self._pool.shutdown(wait=True)

    def stats(self) -> CheckpointStats:
        return replace(self._ckpt)

    def _open_checkpointer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in sql.CHECKPOINT_PRAGMAS:
            conn.execute(pragma)
        return conn

    def _close_checkpointer(self) -> None:
        conn, self._ckpt_conn = self._ckpt_conn, None
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.close()

    async def _checkpoint_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_CHECKPOINT_EVERY_S)
            try:
                await loop.run_in_executor(self._pool, self._checkpoint_sync)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SQLite checkpoint failed; will try again")

    def _checkpoint_sync(self) -> None:
        """One round on the checkpoint thread.

        A PASSIVE checkpoint copies the WAL into the database file (fsyncing both) beside the
        writer, which goes on committing meanwhile. But the WAL only starts over from its
        beginning once a checkpoint has copied all of it, which under steady ingest never
        happens by itself (frames arrive while it fsyncs). So past _WAL_RESTART_BYTES, more
        PASSIVE rounds copy what arrived during the previous one until that tail is short, the
        WAL is fsynced, and only then is the writer held at the gate while a RESTART copies the
        last few frames (two short fsyncs); the next commit writes from the WAL's start. If a
        reader on an old snapshot is in the way, it is all tried again next round. A WAL file
        left large by a burst is truncated in a quiet round.
        """
        conn = self._ckpt_conn
        if conn is None:
            return
        stats = self._ckpt
        frames, copied = self._passive(conn)
        if frames < 0:  # not in WAL mode
            return
        arrived = frames - self._ckpt_frames if frames >= self._ckpt_frames else frames
        self._ckpt_frames = frames
        wal = f"{self.path}-wal"
        try:
            size = os.stat(wal).st_size
        except FileNotFoundError:
            return
        frame_bytes = conn.execute("PRAGMA page_size").fetchone()[0] + 24
        truncate = size > _WAL_TRUNCATE_BYTES and arrived <= _QUIET_FRAMES
        if not truncate:
            if frames * frame_bytes < _WAL_RESTART_BYTES:
                return
            for _ in range(_CATCH_UP_ROUNDS):
                before = frames
                frames, copied = self._passive(conn)
                if copied < frames or frames - before <= _CATCH_UP_FRAMES:
                    break
            if copied < frames:  # a reader holds an old snapshot: a RESTART would fail too
                stats.restart_busy += 1
                return
            fd = os.open(wal, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # what came in during the last PASSIVE, before the gate
            finally:
                os.close(fd)
        mode = "TRUNCATE" if truncate else "RESTART"
        with self._gate:
            start = time.perf_counter()
            ((busy, _, _),) = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            held = time.perf_counter() - start
        stats.writer_held_max_s = max(stats.writer_held_max_s, held)
        stats.writer_held_total_s += held
        if busy:
            stats.restart_busy += 1
        else:
            stats.restarts += 1
            stats.truncates += truncate
            self._ckpt_frames = 0

    def _passive(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(frames in the WAL, frames copied) as of the start of a PASSIVE checkpoint."""
        start = time.perf_counter()
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._ckpt.passive += 1
        self._ckpt.passive_max_s = max(self._ckpt.passive_max_s, time.perf_counter() - start)
        return frames, copied
