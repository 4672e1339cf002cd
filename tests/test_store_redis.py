"""Two hub replicas sharing one Redis: what the shared contract suite cannot see from one store."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from sidekick.alert import Alert, Priority, now_ns
from sidekick.store.base import Delivery, EventQuery
from sidekick.store.redis import RedisStore

OUT = "webhook"


def alert(i: int, uuid: str | None = None) -> Alert:
    return Alert(
        rule=f"Rule {i % 3}",
        priority=Priority.WARNING,
        time_ns=1_700_000_000_000_000_000 + i,
        output_fields={"proc.name": "sh", "n": i},
        output=f"alert {i}",
        tags=["t"],
        hostname="node",
        uuid=uuid or f"uuid-{i:05d}",
    )


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    a, b = RedisStore(redis_url, consumer="a"), RedisStore(redis_url, consumer="b")
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def drain(store: RedisStore, got: list[Delivery], idle_rounds: int = 3) -> None:
    """Lease and complete until a few leases in a row come back empty."""
    idle = 0
    while idle < idle_rounds:
        batch = await store.lease(OUT, 7, lease_s=30, wait_s=0.05)
        idle = 0 if batch else idle + 1
        got.extend(batch)
        await store.complete(batch)


async def test_accepted_on_either_replica_is_leased_exactly_once(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    n = 300
    for start in range(0, n, 50):
        store = a if start % 100 else b
        result = await store.accept([(alert(i), [OUT]) for i in range(start, start + 50)], 60)
        assert all(result)
    got_a: list[Delivery] = []
    got_b: list[Delivery] = []
    await asyncio.gather(drain(a, got_a), drain(b, got_b))
    counts = Counter(d.alert.uuid for d in got_a + got_b)
    assert len(counts) == n
    assert set(counts.values()) == {1}
    assert got_a and got_b  # both replicas took part
    stats = (await b.queue_stats([OUT]))[OUT]
    assert (stats.pending, stats.oldest_pending_ns, stats.dead) == (0, None, 0)


async def test_abandoned_lease_is_claimed_by_the_other_replica(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    assert await a.accept([(alert(1), [OUT])], 60) == [True]
    (leased,) = await a.lease(OUT, 10, lease_s=0.3, wait_s=0)
    assert await b.lease(OUT, 10, lease_s=0.3, wait_s=0) == []  # still held by a
    await asyncio.sleep(0.4)  # replica a "dies" without settling
    (claimed,) = await b.lease(OUT, 10, lease_s=30, wait_s=0)
    assert claimed.alert == leased.alert
    assert (claimed.attempts, claimed.accepted_ns) == (0, leased.accepted_ns)
    assert (await a.queue_stats([OUT]))[OUT].pending == 1
    await b.complete([claimed])
    # a wakes up late: settling its stale lease must not queue the alert again
    await a.retry(leased, now_ns(), "late failure")
    await a.bury(leased, "late burial")
    stats = (await a.queue_stats([OUT]))[OUT]
    assert (stats.pending, stats.dead) == (0, 0)
    assert await a.lease(OUT, 10, lease_s=30, wait_s=0) == []


async def test_claimed_retry_keeps_its_attempts(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    await a.accept([(alert(1), [OUT])], 60)
    (first,) = await a.lease(OUT, 1, lease_s=30, wait_s=0)
    await a.retry(first, now_ns(), "boom")
    (second,) = await a.lease(OUT, 1, lease_s=0.2, wait_s=1)
    assert second.attempts == 1
    await asyncio.sleep(0.3)
    (third,) = await b.lease(OUT, 1, lease_s=30, wait_s=0)
    assert (third.id, third.attempts, third.accepted_ns) == (second.id, 1, first.accepted_ns)
    assert (await b.queue_stats([OUT]))[OUT].oldest_pending_ns == first.accepted_ns


async def test_same_uuid_on_both_replicas_is_deduplicated(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    assert await a.accept([(alert(1), [OUT])], 60) == [True]
    assert await b.accept([(alert(1), [OUT])], 60) == [False]
    # the same batch racing on both replicas: every uuid wins exactly once
    batch = [(alert(i), [OUT]) for i in range(2, 202)]
    ra, rb = await asyncio.gather(a.accept(batch, 60), b.accept(batch, 60))
    assert all(x != y for x, y in zip(ra, rb, strict=True))
    page = await b.events(EventQuery(limit=1000))
    assert len(page.events) == 201
    assert (await a.queue_stats([OUT]))[OUT].pending == 201


async def test_due_retries_moved_by_both_replicas_are_delivered_once(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    n = 200
    await a.accept([(alert(i), [OUT]) for i in range(n)], 60)
    leased: list[Delivery] = []
    while batch := await a.lease(OUT, 50, lease_s=30, wait_s=0):
        leased += batch
    assert len(leased) == n
    due = now_ns() + 200_000_000
    for d in leased:
        await a.retry(d, due, "503")
    assert await b.lease(OUT, 10, lease_s=30, wait_s=0) == []  # not due yet
    got_a: list[Delivery] = []
    got_b: list[Delivery] = []
    await asyncio.gather(drain(a, got_a, 10), drain(b, got_b, 10))
    counts = Counter(d.alert.uuid for d in got_a + got_b)
    assert len(counts) == n
    assert set(counts.values()) == {1}
    assert {d.attempts for d in got_a + got_b} == {1}
    assert (await a.queue_stats([OUT]))[OUT].pending == 0


async def test_waiting_lease_notices_a_retry_soon(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    await a.accept([(alert(1), [OUT])], 60)
    (d,) = await a.lease(OUT, 1, lease_s=30, wait_s=0)
    await a.retry(d, now_ns() + 100_000_000, "429")
    start = time.monotonic()
    (again,) = await b.lease(OUT, 1, lease_s=30, wait_s=5)
    assert again.alert.uuid == d.alert.uuid
    assert time.monotonic() - start < 1.5  # polled, not left until wait_s


async def test_waiting_lease_wakes_on_accept_by_the_other_replica(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    await b.lease(OUT, 1, lease_s=30, wait_s=0)  # creates the group
    waiter = asyncio.create_task(b.lease(OUT, 10, lease_s=30, wait_s=5))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await a.accept([(alert(1), [OUT])], 60)
    got = await waiter
    assert [d.alert.uuid for d in got] == ["uuid-00001"]
    assert time.monotonic() - start < 1.5  # woken, not left until wait_s


async def test_dead_letters_are_shared(pair: tuple[RedisStore, RedisStore]) -> None:
    a, b = pair
    await a.accept([(alert(i), [OUT, "slack"]) for i in range(3)], 60)
    for d in await a.lease(OUT, 10, lease_s=30, wait_s=0):
        await a.bury(d, "400 bad request")
    letters = await b.dead_letters(None, 10)
    assert len(letters) == 3 and len({x.id for x in letters}) == 3
    assert await b.redrive(None, [letters[0].id]) == 1
    assert await a.redrive(OUT, None) == 2
    assert await a.redrive(OUT, None) == 0
    stats = await b.queue_stats([OUT, "slack"])
    assert (stats[OUT].pending, stats[OUT].dead) == (3, 0)
    assert (stats["slack"].pending, stats["slack"].dead) == (3, 0)


async def test_retention_on_both_replicas_counts_each_event_once(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    await a.accept([(alert(i), []) for i in range(1200)], 60)
    removed = await asyncio.gather(a.enforce_retention(1e12, 100), b.enforce_retention(1e12, 100))
    assert sum(removed) == 1100
    page = await b.events(EventQuery(limit=1000))
    assert [e.uuid for e in page.events] == [f"uuid-{i:05d}" for i in range(1199, 1099, -1)]
    assert page.next_cursor is None
    keys = await a.r.keys("lanner:*")
    assert sum(k.startswith("lanner:ev:") for k in keys) == 100
    for key in ("all", "t:t", "h:node", "p:Warning", "s:syscalls"):
        assert await a.r.zcard(f"lanner:ix:{key}") == 100
    assert sum([await a.r.zcard(k) for k in keys if k.startswith("lanner:ix:r:")]) == 100


async def test_uuid_seen_again_after_its_window_replaces_the_event(
    pair: tuple[RedisStore, RedisStore],
) -> None:
    a, b = pair
    assert await a.accept([(alert(1), [])], 0.05) == [True]
    await asyncio.sleep(0.1)
    again = alert(5, uuid="uuid-00001")
    again.rule = "Other rule"
    assert await b.accept([(again, [])], 0.05) == [True]
    page = await a.events(EventQuery(limit=10))
    assert [(e.uuid, e.rule) for e in page.events] == [("uuid-00001", "Other rule")]
    assert await a.r.exists("lanner:ix:r:Rule 1") == 0  # the old copy left its indexes
    assert (await a.events(EventQuery(rules=["Rule 1"]))).events == []
