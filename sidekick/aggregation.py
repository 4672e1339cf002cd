"""Alert fatigue control: per output, repeats of a rule within a window become one summary.

An output with ``aggregatewindow`` groups its alerts by rule and the values of its
``aggregatefields``. The first alert of a group opens a window and is delivered at once; the
repeats inside the window are only counted. The store decides which, in the same transaction
(SQLite) or script (Redis) that accepts the alert, so replicas sharing Redis agree on who opened
a window and no count is lost or taken twice. Once a window has ended, the hub's flusher has the
store queue one summary alert for it, to that output only, as an ordinary delivery (retries,
dead letters). A window without repeats ends without a summary.

The summary is a function of the window record alone, uuid included, so the replica that
builds it, or a retry of its delivery, always sends the same alert.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from sidekick.alert import TEST_RULE, Alert, format_time_ns

COUNT_FIELD = "lanner.aggregated_count"
FIRST_FIELD = "lanner.aggregated_first"  # event time of the first repeat counted
LAST_FIELD = "lanner.aggregated_last"  # ... and of the last
WINDOW_FIELD = "lanner.aggregate_window"
OPENER_FIELD = "lanner.aggregate_opener"  # uuid of the alert delivered when the window opened

_NAMESPACE = uuid.UUID("5b0e7f0a-3c55-4d3e-9a7e-4c616e6e6572")  # summary uuids (uuid5)


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One output's setting: ``window_ns`` > 0, and the output fields that split groups."""

    window_ns: int
    fields: tuple[str, ...] = ()

    def key(self, alert: Alert) -> str | None:
        """The alert's group within its output, or None when it is never aggregated.

        The /test alert is exempt: whoever sends it wants to see each one arrive.
        """
        if alert.rule == TEST_RULE:
            return None
        values = [alert.output_fields.get(name) for name in self.fields]
        # The field names are part of the key: a changed setting starts new groups.
        raw = orjson.dumps([alert.rule, self.fields, values])
        return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(slots=True)
class Window:
    """A window as the store records it; ``first_ns``/``last_ns`` are 0 while ``count`` is."""

    output: str
    key: str
    start_ns: int  # hub (or Redis) clock when the opener was accepted
    end_ns: int
    count: int  # repeats counted instead of delivered
    first_ns: int
    last_ns: int
    opener: Alert
    fields: tuple[str, ...]

    def summary_uuid(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.output}\0{self.key}\0{self.start_ns}"))

    def summary(self) -> Alert:
        """The alert that stands for the window's repeats."""
        opener = self.opener
        values = {name: opener.output_fields.get(name) for name in self.fields}
        span = duration_text(self.end_ns - self.start_ns)
        plural = "s" if self.count != 1 else ""
        split = ", ".join(f"{name}={_text(value)}" for name, value in values.items())
        output = f"{self.count} more alert{plural} of rule {opener.rule}"
        output += f" ({split}) in the last {span}" if split else f" in the last {span}"
        return Alert(
            rule=opener.rule,
            priority=opener.priority,
            time_ns=self.end_ns,
            output_fields={
                **values,
                COUNT_FIELD: self.count,
                FIRST_FIELD: format_time_ns(self.first_ns),
                LAST_FIELD: format_time_ns(self.last_ns),
                WINDOW_FIELD: span,
                OPENER_FIELD: opener.uuid,
            },
            output=output,
            source=opener.source,
            tags=list(opener.tags),
            # Repeats may come from many hosts unless a field splits them: name none.
            hostname="",
            uuid=self.summary_uuid(),
        )


def duration_text(ns: int) -> str:
    """``10s``, ``5m``, ``2h``, ``1d``; ``2.5s`` when no whole unit fits."""
    seconds = ns / 1e9
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _text(value: Any) -> str:
    if value is None:
        return "<NA>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(item) for item in value)
    return str(value)
