"""What waits between ``GrpcPublisher.publish`` and the hub's ack, with exact counts.

Alerts queue in memory up to ``buffer_limit`` (queued plus sent but unacknowledged). Beyond it
they go to the spill file if there is one, and, while it holds a backlog, every new alert goes
there too, behind it, so the hub receives them in the order they were published. When neither
can take an alert it is dropped and counted; the drops not yet reported become one alert
(``DROPPED_RULE``) that the publisher sends first once a hub acks again.

Thread-safe: the detect loop calls ``add``; the publisher's thread takes batches and reports
acks; any thread reads counts or waits for idleness.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from detector.publish_spill import SpillFile
from sidekick.alert import Alert, Priority, format_time_ns, new_uuid

log = logging.getLogger("lanner.publish")

DROPPED_RULE = "Lanner internal: alerts dropped"
INTERNAL_SOURCE = "internal"
_NEVER = 1 << 62


class AlertBuffer:
    """``wake()`` is called (from ``add``, outside any lock) when the consumer asked for it."""

    def __init__(
        self, buffer_limit: int, spill_path: str | Path | None, spill_limit: int, hostname: str,
        wake: Callable[[], None],
    ) -> None:
        self._limit = buffer_limit
        self._hostname = hostname
        self._wake = wake
        self.lock = threading.Lock()
        self._idle = threading.Condition(self.lock)  # notified whenever alerts leave memory
        self._queue: collections.deque[Alert] = collections.deque()
        self._in_memory = 0  # queued + taken but not yet acknowledged
        self._wake_at = _NEVER  # queued (or spilled) alerts at which add() calls wake()
        self._flushing = 0
        self._closed = False
        self.published = self.internal = self.acked = self.duplicates = 0
        self.rejected = self.spilled = self.dropped = 0
        self._unreported = 0  # drops not yet reported to the hub
        self._drop_first = self._drop_last = 0  # their time span (ns)
        self._spill = SpillFile(str(spill_path), spill_limit) if spill_path else None
        self.recovered = self._spill.unread if self._spill else 0
        if self._spill and self._spill.torn:
            self._count_drops(self._spill.torn)

    # -- producer ---------------------------------------------------------------------------

    def add(self, alert: Alert) -> bool:
        """Keep one alert; False if it was dropped (counted). RuntimeError after close()."""
        wake = False
        with self.lock:
            if self._closed:
                raise RuntimeError("publish() after close()")
            self.published += 1
            spill = self._spill
            backlog = spill.unread if spill else 0
            if not backlog and self._in_memory < self._limit:
                self._queue.append(alert)
                self._in_memory += 1
                kept = True
            elif spill is not None and spill.append(alert.to_json() + b"\n"):
                self.spilled += 1
                backlog += 1
                kept = True
            else:
                self._count_drops(1)
                kept = False
            if len(self._queue) + backlog >= self._wake_at:
                self._wake_at = _NEVER
                wake = True
        if wake:
            self._wake()
        return kept

    def _count_drops(self, count: int) -> None:
        """Under the lock."""
        now = time.time_ns()
        if not self._unreported:
            self._drop_first = now
        self._drop_last = now
        self.dropped += count
        self._unreported += count

    # -- consumer (the publisher's thread) --------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def take(self, batch_size: int, linger_over: bool) -> tuple[list[Alert], int | None] | None:
        """The next batch's alerts and, if they were read from the spill file, the offset to
        commit once they are acknowledged. None if not ready: then ``wake`` is armed for when
        there is something (or a full batch, if some alerts are waiting for their linger).

        The memory queue goes first: while the spill file has a backlog, the queue only holds
        alerts older than it (and drop reports).
        """
        with self.lock:
            queued = len(self._queue)
            if queued and (queued >= batch_size or linger_over or self._flushing):
                self._wake_at = _NEVER
                return [self._queue.popleft() for _ in range(min(queued, batch_size))], None
            spill = self._spill
            if queued or spill is None or not spill.unread:
                self._wake_at = batch_size if queued else 1
                return None
            count = min(spill.unread, batch_size)
        # Outside the lock, a disk read: only this thread reads, and only finished lines.
        alerts, bad, lines = spill.read(count)
        with self.lock:
            spill.take(lines)
            self._in_memory += len(alerts)
            if bad:
                self._count_drops(bad)
        if bad:
            log.error("%d unreadable lines in the spill file %s skipped", bad, spill.path)
        return alerts, spill.read_offset

    def reject(self, count: int) -> None:
        """Taken alerts that could not be encoded: they leave, counted as rejected."""
        with self.lock:
            self.rejected += count
            self._in_memory -= count
            self._idle.notify_all()

    def acknowledge(self, count: int, rejected: int, duplicates: int, spill_end: int) -> None:
        """The hub answered for a batch of ``count`` alerts."""
        with self.lock:
            self.acked += count - rejected
            self.duplicates += duplicates
            self.rejected += rejected
            self._in_memory -= count
            if spill_end and self._spill is not None:
                self._spill.commit(spill_end)
            self._idle.notify_all()

    def report_drops(self) -> int:
        """Queue the report of unreported drops first in line; how many it reports (or 0)."""
        with self.lock:
            count = self._unreported
            if count:
                self._queue.appendleft(self._drop_report())
                self._in_memory += 1
        if count:
            self._wake()
        return count

    def _drop_report(self) -> Alert:
        """Under the lock: the alert telling the hub about the drops not yet reported."""
        count, first, last = self._unreported, self._drop_first, self._drop_last
        self._unreported = 0
        self.internal += 1
        now = time.time_ns()
        since, until = format_time_ns(first), format_time_ns(last)
        return Alert(
            rule=DROPPED_RULE,
            priority=Priority.ERROR,
            time_ns=now,
            output=(
                f"{format_time_ns(now)[11:-1]}: Error Lanner dropped {count} alerts between "
                f"{since} and {until}: the hub was unreachable or too slow and the publisher's "
                f"buffer was full (hostname={self._hostname})"
            ),
            output_fields={
                "lanner.dropped": count,
                "lanner.dropped.first": since,
                "lanner.dropped.last": until,
                "lanner.buffer_limit": self._limit,
                "lanner.spill_limit": self._spill.limit if self._spill else None,
            },
            source=INTERNAL_SOURCE,
            tags=["internal", "lanner"],
            hostname=self._hostname,
            uuid=new_uuid(),
        )

    # -- anyone -----------------------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is left to deliver, drop reports included; consumers stop
        lingering meanwhile."""
        with self._idle:
            self._flushing += 1
            self._wake()  # a batch lingering for more alerts goes now
            try:
                return self._idle.wait_for(self._is_idle, timeout)
            finally:
                self._flushing -= 1

    def _is_idle(self) -> bool:
        backlog = self._spill.unread if self._spill else 0
        return not (self._in_memory or self._unreported or backlog)

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "published": self.published, "internal": self.internal,
                "recovered": self.recovered, "acked": self.acked, "duplicates": self.duplicates,
                "rejected": self.rejected, "buffered": self._in_memory, "spilled": self.spilled,
                "spill_backlog": self._spill.unread if self._spill else 0,
                "dropped": self.dropped,
            }

    def close(self, unacked: Iterable[list[Alert] | None]) -> int:
        """Once the consumer stopped: keep what memory holds in the spill file (a report of
        the unreported drops with it), or count it as dropped. ``unacked``: the alerts of each
        taken, unacknowledged batch (None for those read from the spill file: still in it).
        Returns how many alerts were not delivered.
        """
        with self.lock:
            self._closed = True
            memory = [alert for alerts in unacked if alerts is not None for alert in alerts]
            memory += self._queue
            from_file = self._in_memory - len(memory)
            self._queue.clear()
            self._in_memory = 0
            spill = self._spill
            if spill is None:
                self._count_drops(len(memory))
                undelivered = len(memory)
            else:
                if self._unreported:
                    memory.append(self._drop_report())
                spill.unread += from_file  # for counts(): the next start reads them again
                for alert in memory:
                    if not spill.append(alert.to_json() + b"\n", force=True):
                        self._count_drops(1)
                undelivered = spill.unread
                spill.close()
            unreported = self._unreported
        if spill is not None and undelivered:
            log.warning("closing with %d alerts undelivered: they wait in %s for the next start",
                        undelivered, spill.path)
        if unreported:
            log.error("closing with %d dropped alerts never reported to a hub (%d of them just "
                      "now, undelivered, without a spill file to keep them)", unreported,
                      undelivered if spill is None else 0)
        return undelivered
