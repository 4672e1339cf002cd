"""Background tasks stop for certain, even those a single cancellation does not stop."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from sidekick.tasks import cancel_and_wait


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 2:
                    raise
                swallowed += 1

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled() and swallowed == 2


async def test_failed_and_finished_tasks_are_waited_without_raising() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fail())
    finished = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait(failed, finished)
    assert isinstance(failed.exception(), ValueError) and finished.done()


async def test_tasks_busy_with_real_redis_commands_all_stop(redis_url: str) -> None:
    """The hub's loops talk to Redis all the time; stopping one must not depend on luck."""
    client = aioredis.Redis.from_url(redis_url)
    await client.zadd("k", {f"m{i}": 0 for i in range(100)})

    async def busy() -> None:
        while True:
            await client.zrangebylex("k", "-", "+", 0, 50)

    try:
        for _ in range(100):
            task = asyncio.create_task(busy())
            await asyncio.sleep(random.random() * 0.003)
            async with asyncio.timeout(5):
                await cancel_and_wait(task)
            assert task.cancelled()
    finally:
        await client.aclose()
