"""The store interface: accepted events, per-output delivery queues, dead letters, dedup.

Two backends implement it and pass the same tests: SQLite (embedded, one process) and Redis
(several hub replicas share it). Everything a backend returns from ``accept`` is durable.
"""

from __future__ import annotations

import abc
import base64
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidekick.aggregation import Aggregation
from sidekick.alert import Alert, Priority


@dataclass(slots=True)
class Delivery:
    """One alert due to one output. ``id`` is backend-specific and opaque."""

    id: str
    output: str
    alert: Alert
    attempts: int  # attempts already made before this lease
    accepted_ns: int  # when the hub accepted the alert; bounds the retry age


@dataclass(slots=True)
class Ingested:
    fresh: list[bool]  # per alert: False when its uuid was a duplicate
    aggregated: dict[str, int]  # per output: alerts counted into a window instead of queued


@dataclass(slots=True)
class DeadLetter:
    id: str
    output: str
    alert: Alert
    attempts: int
    accepted_ns: int
    dead_ns: int
    reason: str


@dataclass(slots=True)
class QueueStats:
    pending: int  # waiting, leased or retrying: not yet delivered
    oldest_pending_ns: int | None  # accepted time of the oldest pending delivery
    dead: int


@dataclass(slots=True)
class EventQuery:
    """Filters of the events API. Lists are OR-ed within a filter, filters AND-ed."""

    min_priority: Priority | None = None
    rules: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    hostnames: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    text: str = ""  # case-insensitive substring of output, rule or any output field value
    since_ns: int | None = None  # inclusive, event time
    until_ns: int | None = None  # exclusive, event time
    limit: int = 100
    cursor: str | None = None  # from the previous page's next_cursor


@dataclass(slots=True)
class EventPage:
    events: list[Alert]
    next_cursor: str | None  # None when there are no older events


@dataclass(slots=True)
class Stats:
    total: int
    by_priority: dict[str, int]  # priority label -> count
    by_rule: dict[str, int]
    by_source: dict[str, int]
    by_hostname: dict[str, int]
    by_tag: dict[str, int]
    buckets: list[tuple[int, int]]  # (bucket start ns, count), oldest first, empty buckets included


def _field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def search_text(output: str, rule: str, output_fields: dict[str, Any]) -> str:
    """What ``EventQuery.text`` matches in, lowercased; both backends use it so they agree.

    ``\x1f`` separates the parts so that a search cannot match across two of them.
    """
    parts = [output, rule]
    for value in output_fields.values():
        if isinstance(value, list):
            parts.extend(_field_text(v) for v in value)
        else:
            parts.append(_field_text(value))
    return "\x1f".join(parts).lower()


def encode_cursor(time_ns: int, uuid: str) -> str:
    """Keyset cursor: the (time, uuid) of the last event of a page, newest-first order."""
    return base64.urlsafe_b64encode(f"{time_ns}:{uuid}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Raises ValueError on a malformed cursor."""
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        time_part, uuid = text.split(":", 1)
        return int(time_part), uuid
    except Exception:
        raise ValueError("malformed cursor") from None


class Store(abc.ABC):
    """One instance per hub process. All methods are coroutines safe to call concurrently."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot answer (used by /healthz)."""

    # --- ingest -----------------------------------------------------------------------------

    async def accept(
        self, batch: list[tuple[Alert, list[str]]], dedup_window_s: float
    ) -> list[bool]:
        """``ingest`` with no output aggregating."""
        return (await self.ingest(batch, dedup_window_s, {})).fresh

    @abc.abstractmethod
    async def ingest(
        self,
        batch: list[tuple[Alert, list[str]]],
        dedup_window_s: float,
        aggregations: Mapping[str, Aggregation],
    ) -> Ingested:
        """Durably store each alert (it has a uuid) and one delivery per named output.

        An alert is new unless its uuid was already accepted within ``dedup_window_s`` (then
        nothing is stored, queued or counted for it). For a named output in ``aggregations``,
        a new alert opens a window of its group and is queued, or falls inside the group's
        open window and is only counted there (``sidekick.aggregation``). When this returns,
        the result survives a kill -9 of the process.
        """

    @abc.abstractmethod
    async def flush_windows(self, limit: int) -> tuple[int, dict[str, int]]:
        """Close up to ``limit`` ended windows: queue a summary for each that counted repeats.

        Returns how many windows this call closed, and the summaries it queued per output.
        Safe to run on every replica at once: each window is closed, and its summary queued,
        exactly once.
        """

    # --- live feed across replicas ---------------------------------------------------------

    async def share_live(self, alerts: list[Alert]) -> None:
        """Offer alerts this replica accepted to the other replicas' live feeds (gRPC
        Subscribe, the UI). A store with a single hub has no one to tell."""

    def live_from_others(self) -> AsyncIterator[list[Alert]] | None:
        """The alerts other replicas accepted, for this replica's live feed, in batches as
        they were shared; None when no other replica can exist. Best effort: a feed, not a
        durable record (the store has every event)."""
        return None

    # --- delivery queue ---------------------------------------------------------------------

    @abc.abstractmethod
    async def lease(self, output: str, limit: int, lease_s: float, wait_s: float) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries of ``output`` for ``lease_s`` seconds.

        Waits up to ``wait_s`` for one to become due. A lease not completed, retried or buried
        within the holder's ``lease_s`` returns to the queue (a crashed worker or replica loses
        nothing). Oldest first.
        """

    @abc.abstractmethod
    async def complete(self, deliveries: list[Delivery]) -> None:
        """Delivered: forget them."""

    @abc.abstractmethod
    async def retry(self, delivery: Delivery, due_ns: int, error: str) -> None:
        """Failed, try again at ``due_ns``; attempts is incremented."""

    @abc.abstractmethod
    async def bury(self, delivery: Delivery, reason: str) -> None:
        """Give up: move to the dead-letter list of its output, counting this attempt."""

    @abc.abstractmethod
    async def dead_letters(self, output: str | None, limit: int) -> list[DeadLetter]:
        """Newest first."""

    @abc.abstractmethod
    async def redrive(self, output: str | None, ids: list[str] | None) -> int:
        """Queue dead letters again (all of ``output``, or those ids); returns how many.

        A redriven delivery starts over: attempts 0 and ``accepted_ns`` now, so it is not buried
        again at once for its age. Dead-letter ids are unique across outputs.
        """

    @abc.abstractmethod
    async def queue_stats(self, outputs: list[str]) -> dict[str, QueueStats]: ...

    # --- recent events ----------------------------------------------------------------------

    @abc.abstractmethod
    async def get_event(self, uuid: str) -> Alert | None: ...

    @abc.abstractmethod
    async def events(self, query: EventQuery) -> EventPage:
        """Newest first (event time, then uuid), keyset-paginated."""

    @abc.abstractmethod
    async def stats(self, query: EventQuery, bucket_s: int) -> Stats:
        """Counts of the events matching ``query`` (limit and cursor ignored)."""

    @abc.abstractmethod
    async def enforce_retention(self, max_age_s: float, max_count: int) -> int:
        """Delete events older than ``max_age_s`` (event time) and beyond the newest
        ``max_count``; returns how many were deleted. Deliveries are not affected."""
