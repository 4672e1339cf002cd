"""Fan-out of accepted alerts to live subscribers (gRPC Subscribe, the UI's live feed).

Ingest must never wait for a subscriber: each subscriber has a bounded queue, and when it is
full the oldest alerts are dropped and counted. Everything runs on the event loop's thread;
``publish`` is synchronous and never blocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sidekick.alert import Alert, Priority

DEFAULT_QUEUE_SIZE = 10_000


class Subscription:
    """An async iterator of the alerts at or above ``min_priority``, published after it began.

    Iteration ends when the broadcaster is closed (after the queued alerts are drained).
    """

    __slots__ = ("_closed", "_event", "_queue", "dropped", "maxsize", "min_priority")

    def __init__(self, min_priority: Priority, maxsize: int) -> None:
        self.min_priority = min_priority
        self.maxsize = maxsize
        self.dropped = 0
        self._queue: deque[Alert] = deque()
        self._event = asyncio.Event()
        self._closed = False

    def _offer(self, alerts: list[Alert]) -> int:
        """Queue the alerts this subscriber wants; returns how many old ones were dropped."""
        floor = self.min_priority
        queue = self._queue
        before = len(queue)
        queue.extend(a for a in alerts if a.priority >= floor)
        if len(queue) == before:
            return 0
        overflow = len(queue) - self.maxsize
        if overflow > 0:
            for _ in range(overflow):
                queue.popleft()
            self.dropped += overflow
        else:
            overflow = 0
        self._event.set()
        return overflow

    def _close(self) -> None:
        self._closed = True
        self._event.set()

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Alert:
        queue = self._queue
        while not queue:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return queue.popleft()

    async def next_batch(self, limit: int = 500) -> list[Alert]:
        """Wait for at least one alert, then take up to ``limit``. Empty list when closed."""
        queue = self._queue
        while not queue:
            if self._closed:
                return []
            self._event.clear()
            await self._event.wait()
        count = min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]


class Broadcaster:
    """Hands every published alert to each current subscriber whose filter it passes."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self.dropped = 0  # total, over all subscribers past and present
        self._subscribers: set[Subscription] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, alerts: list[Alert]) -> None:
        """Offer accepted alerts to every subscriber. Synchronous; never waits."""
        if not alerts or not self._subscribers:
            return
        for sub in self._subscribers:
            self.dropped += sub._offer(alerts)

    @asynccontextmanager
    async def subscribe(
        self, min_priority: Priority | str = Priority.DEBUG
    ) -> AsyncIterator[Subscription]:
        """``async with b.subscribe("warning") as feed: async for alert in feed: ...``

        A string priority is parsed like Falco's (ValueError if unknown; empty means all).
        """
        if isinstance(min_priority, str):
            min_priority = Priority.parse(min_priority) if min_priority.strip() else Priority.DEBUG
        sub = Subscription(min_priority, self.queue_size)
        if self._closed:
            sub._close()
        else:
            self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (each iterator stops after draining its queue)."""
        self._closed = True
        for sub in self._subscribers:
            sub._close()
        self._subscribers.clear()
