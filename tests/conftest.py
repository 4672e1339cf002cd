from __future__ import annotations

from collections.abc import Iterator

import pytest

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
