"""Aggregation windows of the SQLite store (see ``sidekick.aggregation``).

Both functions run on the store's writer thread inside its transaction: ``due_now`` inside the
one that stores the alert, so an alert is counted or queued exactly when it is accepted.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping

from sidekick.aggregation import Aggregation, Window
from sidekick.alert import Alert
from sidekick.store import sqlite_schema as sql

# A group's open window is its newest row. Ended rows stay until the flusher has queued their
# summary, in the same transaction that deletes them, so a restart in between loses nothing.
SCHEMA = """
CREATE TABLE IF NOT EXISTS agg_windows (
    output   TEXT NOT NULL,
    key      TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns   INTEGER NOT NULL,
    count    INTEGER NOT NULL DEFAULT 0,
    first_ns INTEGER NOT NULL DEFAULT 0,
    last_ns  INTEGER NOT NULL DEFAULT 0,
    fields   TEXT NOT NULL,
    opener   BLOB NOT NULL,
    PRIMARY KEY (output, key, start_ns)
);
CREATE INDEX IF NOT EXISTS agg_windows_end ON agg_windows (end_ns);
"""


def due_now(
    conn: sqlite3.Connection,
    outputs: list[str],
    aggregations: Mapping[str, Aggregation],
    alert: Alert,
    blob: bytes,
    now: int,
    counted: dict[str, int],
) -> list[str]:
    """The outputs to queue a new alert to now; each output whose open window counts it
    instead is tallied in ``counted``."""
    due = []
    for name in dict.fromkeys(outputs):
        aggregation = aggregations.get(name)
        key = aggregation.key(alert) if aggregation else None
        if aggregation and key and not _admit(conn, name, aggregation, key, alert, blob, now):
            counted[name] = counted.get(name, 0) + 1
        else:
            due.append(name)
    return due


def _admit(
    conn: sqlite3.Connection,
    output: str,
    aggregation: Aggregation,
    key: str,
    alert: Alert,
    blob: bytes,
    now: int,
) -> bool:
    """True when the alert opens a window (queue it); False when its open window counted it."""
    row = conn.execute(
        "SELECT start_ns, end_ns FROM agg_windows WHERE output = ? AND key = ? "
        "ORDER BY start_ns DESC LIMIT 1",
        (output, key),
    ).fetchone()
    if row is not None and now < row[1]:
        conn.execute(
            "UPDATE agg_windows SET first_ns = CASE count WHEN 0 THEN ? ELSE first_ns END, "
            "last_ns = ?, count = count + 1 WHERE output = ? AND key = ? AND start_ns = ?",
            (alert.time_ns, alert.time_ns, output, key, row[0]),
        )
        return False
    conn.execute(
        "INSERT INTO agg_windows (output, key, start_ns, end_ns, fields, opener) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (output, key, now, now + aggregation.window_ns, ",".join(aggregation.fields), blob),
    )
    return True


def flush(conn: sqlite3.Connection, now: int, limit: int) -> tuple[int, dict[str, int]]:
    """Delete up to ``limit`` windows ended by ``now``, queueing the summaries of those with
    repeats; returns how many were deleted and the summaries queued per output."""
    rows = conn.execute(
        "SELECT output, key, start_ns, end_ns, count, first_ns, last_ns, fields, opener "
        "FROM agg_windows WHERE end_ns <= ? ORDER BY end_ns LIMIT ?",
        (now, limit),
    ).fetchall()
    queued: Counter[str] = Counter()
    for output, key, start, end, count, first, last, fields, opener in rows:
        conn.execute(
            "DELETE FROM agg_windows WHERE output = ? AND key = ? AND start_ns = ?",
            (output, key, start),
        )
        if count:
            window = Window(output, key, start, end, count, first, last,
                            Alert.from_json(opener), tuple(filter(None, fields.split(","))))
            conn.execute(sql.INSERT_DELIVERY, (output, window.summary().to_json(), now, now))
            queued[output] += 1
    return len(rows), dict(queued)
