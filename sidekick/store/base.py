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

import orjson

from sidekick.aggregation import OPENER_FIELD, Aggregation
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
    # output field name -> values (as field_text writes them); OR-ed per name, AND-ed across
    fields: dict[str, list[str]] = field(default_factory=dict)
    triage: list[str] = field(default_factory=list)  # TRIAGE_STATES; "new" includes untriaged
    since_ns: int | None = None  # inclusive, event time
    until_ns: int | None = None  # exclusive, event time
    limit: int = 100
    cursor: str | None = None  # from the previous page's next_cursor

    def has_filters(self) -> bool:
        """Whether anything but the time range narrows the events."""
        return bool(self.rules or self.sources or self.hostnames or self.tags or self.text
                    or self.fields or self.triage or self.min_priority is not None)


TRIAGE_STATES = ("new", "acknowledged", "false_positive", "resolved")


@dataclass(slots=True)
class Triage:
    """What an operator decided about an event; an event without one is "new"."""

    status: str  # one of TRIAGE_STATES
    note: str
    actor: str  # who, as the operator named themselves (the token is shared)
    at_ns: int


@dataclass(slots=True)
class DeliveryRecord:
    """One step of an event's delivery to one output. No record yet: still queued."""

    output: str
    state: str  # DELIVERY_STATES
    at_ns: int
    attempts: int = 0  # attempts made so far
    next_ns: int | None = None  # retrying: when the next attempt is due
    reason: str = ""  # retrying: the last error; dead: why; aggregated: the window's opener
    dead_id: str = ""  # dead: the dead letter's id, to re-drive it
    summary: bool = False  # the step of an aggregation summary this event opened


DELIVERY_STATES = ("delivered", "retrying", "dead", "redriven", "aggregated")
AGGREGATED = "counted in an open aggregation window: its summary goes out when the window ends"


@dataclass(frozen=True, slots=True)
class LocalRulesDoc:
    """The hub's local rules file (the exceptions saved in the UI), as the store keeps it."""

    version: int  # grows by one with each save; 0 when none was ever saved
    text: str  # a whole rules file; "" at version 0


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


def field_text(value: Any) -> str | None:
    """An output field's value as field filters compare it; None (no value) never matches."""
    if value is None:
        return None
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    return _field_text(value)


def log_uuid(alert: Alert) -> str:
    """The event a delivery's record belongs to: an aggregation summary is not an event of its
    own, its steps are shown on the event that opened its window."""
    opener = alert.output_fields.get(OPENER_FIELD)
    return opener if isinstance(opener, str) and opener else alert.uuid


def event_matches(
    d: dict[str, Any], query: EventQuery, prios: set[str] | None, needle: str,
    status: str = "new",
) -> bool:
    """Whether an event (as ``Alert.to_dict``) with triage ``status`` passes ``query``'s filters
    (not its time range); ``prios`` are the priority labels allowed, ``needle`` the lowercased
    text. Stores that filter in code, and live feeds, use it."""
    if query.rules and d["rule"] not in query.rules:
        return False
    if query.sources and d["source"] not in query.sources:
        return False
    if query.hostnames and d["hostname"] not in query.hostnames:
        return False
    if query.tags and not set(query.tags).intersection(d["tags"]):
        return False
    if prios is not None and d["priority"] not in prios:
        return False
    if query.triage and status not in query.triage:
        return False
    fields = d["output_fields"]
    for name, values in query.fields.items():
        if field_text(fields.get(name)) not in values:
            return False
    return not needle or needle in search_text(d["output"], d["rule"], fields)


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

    # --- triage and delivery records --------------------------------------------------------

    @abc.abstractmethod
    async def set_triage(self, uuids: list[str], triage: Triage) -> int:
        """Set the triage of the stored events among ``uuids`` (others are skipped) and add it
        to their history; returns how many were set. Retention removes both with the event."""

    @abc.abstractmethod
    async def triage_of(self, uuids: list[str]) -> dict[str, Triage]:
        """The current triage of those of ``uuids`` that have one."""

    @abc.abstractmethod
    async def triage_history(self, uuid: str) -> list[Triage]:
        """Every triage the event was given, oldest first."""

    @abc.abstractmethod
    async def delivery_log(self, uuid: str) -> list[DeliveryRecord]:
        """The steps of the event's deliveries (every output), oldest first. The store records
        them as they happen: counted into an aggregation window, each failed attempt, dead
        letter, re-drive and the delivery itself; a summary's steps go to the event that
        opened its window."""

    # --- the local rules file -----------------------------------------------------------------

    @abc.abstractmethod
    async def local_rules(self) -> LocalRulesDoc:
        """The local rules file as last saved (by any replica)."""

    @abc.abstractmethod
    async def save_local_rules(self, expected_version: int, text: str) -> bool:
        """Compare-and-set: store ``text`` as version ``expected_version + 1`` if the current
        version is ``expected_version``; False (nothing changed) if another save came first."""

    async def matching_uuids(self, query: EventQuery, limit: int) -> list[str]:
        """Up to ``limit`` uuids of the events matching ``query``, newest first."""
        found: list[str] = []
        query.cursor = None
        while len(found) < limit:
            query.limit = min(1000, limit - len(found))
            page = await self.events(query)
            found += [a.uuid for a in page.events]
            if page.next_cursor is None:
                break
            query.cursor = page.next_cursor
        return found
