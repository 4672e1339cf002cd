"""Per-output delivery workers: lease from the durable queue, send, then complete, retry or bury.

Retries use exponential backoff with full jitter; when the service says how long to wait
(Retry-After), exactly that. A Retry-After also holds the whole output, not just the alert that
got it: no worker sends anything until it has passed, so a rate-limited service sees one probe
per Retry-After instead of every queued alert in turn, and delivery resumes at the pace it
allows. A delivery that used up its attempts or is older than ``maxage`` goes to the
dead-letter list, where it stays visible and can be re-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from outputs.base import Output, PartialFailure, PermanentError, RetryableError
from sidekick.alert import now_ns
from sidekick.config import DeliveryConfig
from sidekick.metrics import Metrics
from sidekick.store.base import Delivery, Store
from sidekick.tasks import cancel_and_wait

log = logging.getLogger("lanner.delivery")

_POLL_S = 1.0  # how long one lease call may wait for work; bounds shutdown latency


def backoff_seconds(
    attempt: int, initial: float, maximum: float, retry_after: float | None
) -> float:
    """The server's Retry-After when it gave one (capped at ``maximum``); else full jitter
    over an exponential ceiling."""
    if retry_after is not None:
        return min(retry_after, maximum)
    return random.uniform(0, min(maximum, initial * 2 ** min(attempt, 32)))


class OutputWorkers:
    """``maxconcurrentrequests`` loops for one output, sharing its client."""

    def __init__(
        self, output: Output, store: Store, metrics: Metrics, settings: DeliveryConfig
    ) -> None:
        self.output = output
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.config = output.config
        self.name = output.name
        self._stopping = asyncio.Event()
        self._held_until = 0.0  # time.monotonic() before which no worker sends (Retry-After)
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_s = (
            self.config.timeout * self.config.batchsize
            + self.config.batchwindow
            + settings.leasemargin
        )

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"deliver-{self.name}-{i}")
            for i in range(max(1, self.config.maxconcurrentrequests))
        ]

    async def stop(self, drain_s: float) -> None:
        """Stop leasing; give in-flight sends ``drain_s`` to finish, then cancel them.

        A cancelled send keeps its lease; it returns to the queue when the lease expires (or at
        the next start for SQLite), so nothing is lost, at worst delivered twice.
        """
        self._stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=drain_s)
        await cancel_and_wait(*pending)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            if (held := self._held_until - time.monotonic()) > 0:
                # Waits on the stop event, so a held output still stops at once.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(held, _POLL_S)):
                        await self._stopping.wait()
                continue
            try:
                batch = await self.store.lease(
                    self.name, self.config.batchsize, self._lease_s, _POLL_S
                )
            except Exception:
                log.exception("output %s: cannot read its queue; retrying", self.name)
                await asyncio.sleep(1.0)
                continue
            if batch:
                await self._fill(batch)
                await self._deliver(batch)

    async def _fill(self, batch: list[Delivery]) -> None:
        """Lease more for up to ``batchwindow`` seconds, until the batch is full."""
        deadline = time.monotonic() + self.config.batchwindow
        while len(batch) < self.config.batchsize and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                batch += await self.store.lease(
                    self.name, self.config.batchsize - len(batch), self._lease_s, min(left, _POLL_S)
                )
            except Exception:
                log.exception("output %s: cannot read its queue; sending what it has", self.name)
                return

    async def _deliver(self, batch: list[Delivery]) -> None:
        try:
            async with asyncio.timeout(self.config.timeout * len(batch) + 5.0):
                await self.output.send([d.alert for d in batch])
        except (RetryableError, TimeoutError) as exc:
            retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
            if retry_after is not None:
                self._hold(retry_after)
            await self._failed(batch, str(exc) or "timeout", retry_after, permanent=False)
            return
        except PermanentError as exc:
            await self._failed(batch, str(exc), None, permanent=True)
            return
        except PartialFailure as exc:
            await self._partly_failed(batch, exc)
            return
        except Exception as exc:  # a bug in an output must not lose the alert
            log.exception("output %s: unexpected error", self.name)
            reason = f"{self.name}: internal error {type(exc).__name__}"
            await self._failed(batch, reason, None, permanent=False)
            return
        await self._succeeded(batch)

    def _hold(self, retry_after: float) -> None:
        until = time.monotonic() + min(retry_after, self.settings.maxbackoff)
        if until > self._held_until:
            self._held_until = until
            log.info("output %s: held for %.1f s as the service asked (Retry-After)",
                     self.name, until - time.monotonic())

    async def _succeeded(self, batch: list[Delivery]) -> None:
        await self.store.complete(batch)
        now = now_ns()
        self.metrics.outputs.labels(self.name, "ok").inc(len(batch))
        for delivery in batch:
            self.metrics.latency.labels(self.name).observe((now - delivery.accepted_ns) / 1e9)

    async def _partly_failed(self, batch: list[Delivery], exc: PartialFailure) -> None:
        delivered = [d for d in batch if d.alert.uuid not in exc.failures]
        if delivered:
            await self._succeeded(delivered)
        for delivery in batch:
            error = exc.failures.get(delivery.alert.uuid)
            if error is not None:
                retry_after = error.retry_after if isinstance(error, RetryableError) else None
                await self._failed(
                    [delivery], str(error), retry_after, isinstance(error, PermanentError)
                )

    async def _failed(
        self, batch: list[Delivery], reason: str, retry_after: float | None, permanent: bool
    ) -> None:
        self.metrics.outputs.labels(self.name, "error").inc(len(batch))
        now = now_ns()
        for delivery in batch:
            attempts = delivery.attempts + 1
            too_old = (now - delivery.accepted_ns) / 1e9 >= self.config.maxage
            if permanent or attempts >= self.config.maxattempts or too_old:
                why = reason if permanent else f"gave up after {attempts} attempts: {reason}"
                await self.store.bury(delivery, why)
                self.metrics.dead_lettered.labels(self.name).inc()
                log.warning(
                    "output %s: alert %s dead-lettered: %s", self.name, delivery.alert.uuid, why
                )
                continue
            delay = backoff_seconds(
                attempts - 1, self.settings.initialbackoff, self.settings.maxbackoff, retry_after
            )
            await self.store.retry(delivery, now + int(delay * 1e9), reason)
            self.metrics.retries.labels(self.name).inc()
        log.info("output %s: %d alert(s) failed (%s)", self.name, len(batch), reason)
