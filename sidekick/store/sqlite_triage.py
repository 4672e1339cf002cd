"""Triage and delivery records of the SQLite store: schema and the statements over them.

Rows follow their event: the trigger below removes them when retention deletes it, so no code
path can leave them behind. Functions taking a connection run on the store's threads (writes
inside the writer's transaction).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sidekick.store import sqlite_schema as sql
from sidekick.store.base import DeliveryRecord, Triage

SCHEMA = """
-- time_ns is the event's: a triage filter walks (status, time_ns, uuid) in page order.
CREATE TABLE IF NOT EXISTS triage (
    uuid    TEXT PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    status  TEXT NOT NULL,
    note    TEXT NOT NULL,
    actor   TEXT NOT NULL,
    at_ns   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS triage_status ON triage (status, time_ns, uuid);

CREATE TABLE IF NOT EXISTS triage_log (
    uuid   TEXT NOT NULL,
    at_ns  INTEGER NOT NULL,
    status TEXT NOT NULL,
    note   TEXT NOT NULL,
    actor  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS triage_log_uuid ON triage_log (uuid, at_ns);

CREATE TABLE IF NOT EXISTS delivery_log (
    uuid     TEXT NOT NULL,
    output   TEXT NOT NULL,
    at_ns    INTEGER NOT NULL,
    state    TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_ns  INTEGER,
    reason   TEXT NOT NULL,
    dead_id  TEXT NOT NULL,
    summary  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS delivery_log_uuid ON delivery_log (uuid);

CREATE TRIGGER IF NOT EXISTS events_records_ad AFTER DELETE ON events BEGIN
    DELETE FROM triage WHERE uuid = old.uuid;
    DELETE FROM triage_log WHERE uuid = old.uuid;
    DELETE FROM delivery_log WHERE uuid = old.uuid;
END;
-- A uuid accepted again after its dedup window keeps its triage, at its new time.
CREATE TRIGGER IF NOT EXISTS events_triage_au AFTER UPDATE OF time_ns ON events BEGIN
    UPDATE triage SET time_ns = new.time_ns WHERE uuid = new.uuid;
END;
"""

# (uuid, output, at_ns, state, attempts, next_ns, reason, dead_id, summary, uuid again): only
# while the event is stored, so a delivery finishing after retention leaves nothing behind.
RECORD = (
    "INSERT INTO delivery_log (uuid, output, at_ns, state, attempts, next_ns, reason, dead_id, "
    "summary) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM events WHERE uuid = ?)"
)


def record_row(
    uuid: str, output: str, at_ns: int, state: str, attempts: int = 0,
    next_ns: int | None = None, reason: str = "", dead_id: str = "", summary: bool = False,
) -> tuple[Any, ...]:
    return (uuid, output, at_ns, state, attempts, next_ns, reason, dead_id, int(summary), uuid)


def record(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        conn.executemany(RECORD, rows)


def set_triage(conn: sqlite3.Connection, uuids: list[str], triage: Triage) -> int:
    done = 0
    values = (triage.status, triage.note, triage.actor, triage.at_ns)
    for chunk in sql.chunks(list(dict.fromkeys(uuids)), sql.IN_CHUNK):
        marks = sql.marks(len(chunk))
        # WHERE before ON CONFLICT: SQLite's parser needs it after INSERT ... SELECT.
        conn.execute(
            "INSERT INTO triage (uuid, time_ns, status, note, actor, at_ns) "
            f"SELECT uuid, time_ns, ?, ?, ?, ? FROM events WHERE uuid IN ({marks}) "
            "ON CONFLICT (uuid) DO UPDATE SET status = excluded.status, note = excluded.note, "
            "actor = excluded.actor, at_ns = excluded.at_ns",
            [*values, *chunk],
        )
        done += conn.execute(
            "INSERT INTO triage_log (uuid, at_ns, status, note, actor) "
            f"SELECT uuid, ?, ?, ?, ? FROM events WHERE uuid IN ({marks})",
            [triage.at_ns, triage.status, triage.note, triage.actor, *chunk],
        ).rowcount
    return done


def triage_of(conn: sqlite3.Connection, uuids: list[str]) -> dict[str, Triage]:
    found: dict[str, Triage] = {}
    for chunk in sql.chunks(uuids, sql.IN_CHUNK):
        for uuid, status, note, actor, at_ns in conn.execute(
            "SELECT uuid, status, note, actor, at_ns FROM triage "
            f"WHERE uuid IN ({sql.marks(len(chunk))})", chunk
        ):
            found[uuid] = Triage(status, note, actor, at_ns)
    return found


def triage_history(conn: sqlite3.Connection, uuid: str) -> list[Triage]:
    rows = conn.execute(
        "SELECT status, note, actor, at_ns FROM triage_log WHERE uuid = ? ORDER BY at_ns, rowid",
        (uuid,),
    ).fetchall()
    return [Triage(*row) for row in rows]


def delivery_log(conn: sqlite3.Connection, uuid: str) -> list[DeliveryRecord]:
    rows = conn.execute(
        "SELECT output, state, at_ns, attempts, next_ns, reason, dead_id, summary "
        "FROM delivery_log WHERE uuid = ? ORDER BY at_ns, rowid",
        (uuid,),
    ).fetchall()
    return [DeliveryRecord(o, s, at, n, nxt, r, d, bool(summ))
            for o, s, at, n, nxt, r, d, summ in rows]
