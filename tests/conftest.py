from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from sidekick.store.base import Store
from tests.helm_support import Helm, tool
from tests.receiver import Receiver
from tests.support import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording HTTP receiver (tests/receiver.py); a test module may define its own."""
    with Receiver() as rx:
        yield rx


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Store]:
    """A store over the same data each call (the same SQLite file, the same Redis server), as a
    hub restarting or another replica sees it; the argument names the replica (Redis)."""
    if request.param == "sqlite":
        from sidekick.store.sqlite import SqliteStore

        return lambda replica="a": SqliteStore(tmp_path / "data" / "lanner.db")
    redis_url = request.getfixturevalue("redis_url")
    from sidekick.store.redis import RedisStore

    return lambda replica="a": RedisStore(redis_url, consumer=replica)


@pytest.fixture
async def store(store_factory: Callable[..., Store]) -> AsyncIterator[Store]:
    """An open store of replica "a", on each backend."""
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="session")
def helm(helm_env: dict[str, str]) -> Helm:
    return Helm(tool("helm"), helm_env)
