"""The local rules file in the SQLite store: one row, its text and version.

Functions taking a connection run on the store's threads (the save inside the writer's
transaction, so the compare and the set are one step).
"""

from __future__ import annotations

import sqlite3

from sidekick.store.base import LocalRulesDoc

SCHEMA = """
CREATE TABLE IF NOT EXISTS local_rules (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    text    TEXT NOT NULL
);
"""


def read(conn: sqlite3.Connection) -> LocalRulesDoc:
    row = conn.execute("SELECT version, text FROM local_rules WHERE id = 1").fetchone()
    return LocalRulesDoc(row[0], row[1]) if row else LocalRulesDoc(0, "")


def save(conn: sqlite3.Connection, expected_version: int, text: str) -> bool:
    if read(conn).version != expected_version:
        return False
    conn.execute(
        "INSERT INTO local_rules (id, version, text) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, text = excluded.text",
        (expected_version + 1, text),
    )
    return True
