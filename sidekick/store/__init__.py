"""Store backends behind one interface (see base.py)."""

from __future__ import annotations

from pathlib import Path

from sidekick.store.base import Store


def make_store(kind: str, *, datadir: Path, redis_url: str, replica: str) -> Store:
    """``kind`` is "sqlite" (a file in ``datadir``) or "redis" (shared by replicas)."""
    if kind == "sqlite":
        from sidekick.store.sqlite import SqliteStore

        return SqliteStore(datadir / "lanner.db")
    if kind == "redis":
        from sidekick.store.redis import RedisStore

        return RedisStore(redis_url, consumer=replica)
    raise ValueError(f"unknown store {kind!r} (sqlite or redis)")
