"""SQL for the SQLite store: schema, pragmas, statement builders, event and stats queries.

Kept apart from sqlite.py so the store reads as control flow (threads, transactions, waking)
and this file as data layout and queries. Functions taking a connection run on the store's
worker thread.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from sidekick.alert import Priority
from sidekick.store.base import TRIAGE_STATES, EventQuery, Stats

T = TypeVar("T")

SIZES = (256, 64, 16, 4, 1)  # rows per multi-row INSERT; 256 * 10 columns < 32766 variables
IN_CHUNK = 500  # ids per IN (...) list
MAX_BUCKETS = 1000
# A range holding less than 1/_SHORT_RANGE of the stored time span counts from the time index.
_SHORT_RANGE = 4

# WAL + synchronous=NORMAL: a commit is in the OS page cache before accept() returns, so it
# survives kill -9 of the process (not a power cut), without an fsync per group commit.
# No auto-checkpoint: it would run inside a commit on the writer thread, and its fsyncs (tens
# of ms) would hold up every accept, lease and complete queued behind it. The store's
# checkpoint thread does it instead, on its own connection (CHECKPOINT_PRAGMAS).
# secure_delete=FAST: some builds (Debian's) default to ON, which writes every page freed by a
# delete (a drained delivery page) to the WAL again as zeros; FAST still zeroes deleted cells
# on pages that are written anyway.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=OFF",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
    "PRAGMA mmap_size=268435456",
    "PRAGMA busy_timeout=5000",
    "PRAGMA wal_autocheckpoint=0",
    "PRAGMA secure_delete=FAST",
)

# The checkpointer fsyncs the WAL before copying it into the database file, and the database
# file before the WAL may be reused: that ordering is what synchronous=NORMAL promises (a power
# cut loses at most the last commits, never the database). busy_timeout=0: a RESTART must not
# wait for readers while it holds the write lock; it is retried at the next round instead.
CHECKPOINT_PRAGMAS = (
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=0",
    "PRAGMA wal_autocheckpoint=0",
)

READER_PRAGMAS = (  # stats use a temporary table, so the reader is not query_only
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
    "PRAGMA mmap_size=268435456",
    "PRAGMA busy_timeout=5000",
)

SCHEMA = """
-- Dedup uses the events table itself (uuid UNIQUE, accepted_ns): a second uuid-keyed
-- b-tree would add one more random page write per alert to every group commit. Events
-- that retention deletes while still inside the dedup window leave a tombstone here, so
-- dedup survives them.
CREATE TABLE IF NOT EXISTS dedup_tomb (
    uuid        TEXT PRIMARY KEY,
    accepted_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_tomb_age ON dedup_tomb (accepted_ns);

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- tags: the JSON array, also kept here so stats and triggers need not parse the alert.
-- search: lowercased output, rule and output field values, for substring search.
CREATE TABLE IF NOT EXISTS events (
    uuid        TEXT NOT NULL UNIQUE,
    time_ns     INTEGER NOT NULL,
    accepted_ns INTEGER NOT NULL,
    priority    INTEGER NOT NULL,
    rule        TEXT NOT NULL,
    source      TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    tags        TEXT NOT NULL,
    search      TEXT NOT NULL,
    json        BLOB NOT NULL
);
-- Every filter index ends in (time_ns, uuid) so a page is one ordered index range scan.
-- The time index also covers every column stats() groups by: counting a time range reads
-- this index alone, never the much larger rows.
CREATE INDEX IF NOT EXISTS events_time
    ON events (time_ns, uuid, priority, rule, source, hostname, tags);
CREATE INDEX IF NOT EXISTS events_rule ON events (rule, time_ns, uuid);
CREATE INDEX IF NOT EXISTS events_host ON events (hostname, time_ns, uuid);
CREATE INDEX IF NOT EXISTS events_source ON events (source, time_ns, uuid);
CREATE INDEX IF NOT EXISTS events_priority ON events (priority, time_ns, uuid);

CREATE TABLE IF NOT EXISTS event_tags (
    tag     TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    uuid    TEXT NOT NULL,
    PRIMARY KEY (tag, time_ns, uuid)
) WITHOUT ROWID;

-- Tag rows follow their event whether it is deleted (retention) or replaced (a uuid
-- accepted again after the dedup window), so no code path can leave them behind.
CREATE TRIGGER IF NOT EXISTS events_tags_ad AFTER DELETE ON events BEGIN
    DELETE FROM event_tags WHERE time_ns = old.time_ns AND uuid = old.uuid
        AND tag IN (SELECT value FROM json_each(old.tags));
END;
CREATE TRIGGER IF NOT EXISTS events_tags_au AFTER UPDATE ON events BEGIN
    DELETE FROM event_tags WHERE time_ns = old.time_ns AND uuid = old.uuid
        AND tag IN (SELECT value FROM json_each(old.tags));
END;

-- next_at is the due time; a lease moves it to the lease expiry, so "due or lease expired"
-- is the single range next_at <= now on one index. leased_until tells a lease from a retry
-- scheduled in the future: set by a lease (to the same expiry), cleared by retry(). Leases
-- belong to the process that took them, so open() makes those still running due at once.
-- (Databases from before leased_until get the column added by the store on open.)
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY,
    output       TEXT NOT NULL,
    alert        BLOB NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    accepted_ns  INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    last_error   TEXT,
    leased_until INTEGER
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (output, next_at);
CREATE INDEX IF NOT EXISTS deliveries_age ON deliveries (output, accepted_ns);

CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    output      TEXT NOT NULL,
    alert       BLOB NOT NULL,
    attempts    INTEGER NOT NULL,
    accepted_ns INTEGER NOT NULL,
    dead_ns     INTEGER NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_output ON dead_letters (output, dead_ns);
CREATE INDEX IF NOT EXISTS dead_letters_time ON dead_letters (dead_ns);
"""

EVENT_COLUMNS = 10
TAG_COLUMNS = 3
DELIVERY_COLUMNS = 4
INSERT_DELIVERY = (
    "INSERT INTO deliveries (output, alert, accepted_ns, next_at) VALUES (?, ?, ?, ?)"
)


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sized(rows: list[T]) -> Iterator[list[T]]:
    """Chunks of a few fixed sizes, so the multi-row statements stay in the statement cache."""
    start = 0
    for size in SIZES:
        while len(rows) - start >= size:
            yield rows[start : start + size]
            start += size


def flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def marks(n: int) -> str:
    return ",".join("?" * n)


def _values(rows: int, columns: int) -> str:
    one = "(" + ",".join("?" * columns) + ")"
    return ",".join([one] * rows)


# Multi-row VALUES rather than executemany: one statement step per chunk instead of per row,
# which also means one GIL hand-off per chunk instead of one per row.
def insert_events_sql(rows: int) -> str:
    """Insert events, RETURNING the uuids that are new or whose earlier accept has left the
    dedup window (the trailing parameter is that cutoff). A uuid repeated within the same
    statement conflicts with its own fresh row and is not returned: the within-batch dedup.
    """
    return (
        "INSERT INTO events (uuid, time_ns, accepted_ns, priority, rule, source, hostname, "
        f"tags, search, json) VALUES {_values(rows, EVENT_COLUMNS)} "
        "ON CONFLICT (uuid) DO UPDATE SET time_ns = excluded.time_ns, "
        "accepted_ns = excluded.accepted_ns, priority = excluded.priority, "
        "rule = excluded.rule, source = excluded.source, hostname = excluded.hostname, "
        "tags = excluded.tags, search = excluded.search, json = excluded.json "
        "WHERE events.accepted_ns < ? RETURNING uuid"
    )


def insert_tags_sql(rows: int) -> str:
    values = _values(rows, TAG_COLUMNS)
    return f"INSERT OR IGNORE INTO event_tags (tag, time_ns, uuid) VALUES {values}"


def insert_deliveries_sql(rows: int) -> str:
    return (
        "INSERT INTO deliveries (output, alert, accepted_ns, next_at) "
        f"VALUES {_values(rows, DELIVERY_COLUMNS)}"
    )


def _in(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    if len(values) == 1:
        return f"{column} = ?", list(values)
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def where(
    q: EventQuery,
    cursor: tuple[int, str] | None = None,
    include_tags: bool = True,
    time_alias: str = "e",
) -> tuple[str, list[Any]]:
    """The filters of ``q`` as a WHERE body over ``events e``.

    ``include_tags=False`` leaves the tag filter to the caller (who drives from event_tags);
    ``time_alias`` names the table whose (time_ns, uuid) the range and cursor constrain, so a
    tag-driven query constrains the index it walks.
    """
    clauses: list[str] = ["1"]
    params: list[Any] = []
    for column, values in (("e.rule", q.rules), ("e.source", q.sources),
                           ("e.hostname", q.hostnames)):
        if values:
            sql, args = _in(column, values)
            clauses.append(sql)
            params += args
    if q.min_priority is not None:
        clauses.append("e.priority >= ?")
        params.append(int(q.min_priority))
    if q.tags and include_tags:
        # An IN over the tag index drives the scan from the matching tags, not from all events.
        sql, args = _in("tf.tag", q.tags)
        for op, bound in ((">=", q.since_ns), ("<", q.until_ns)):
            if bound is not None:
                sql += f" AND tf.time_ns {op} ?"
                args.append(bound)
        clauses.append("(e.time_ns, e.uuid) IN "
                       f"(SELECT tf.time_ns, tf.uuid FROM event_tags tf WHERE {sql})")
        params += args
    if q.text:
        clauses.append("instr(e.search, ?) > 0")
        params.append(q.text.lower())
    for name, values in q.fields.items():
        clauses.append(f"({_FIELD_TEXT}) IN ({marks(len(values))})")
        params += [json_path(name)] * 3 + list(values)
    if q.triage:
        clause, args = _triage_clause(q.triage)
        if clause:
            clauses.append(clause)
            params += args
    if q.since_ns is not None:
        clauses.append(f"{time_alias}.time_ns >= ?")
        params.append(q.since_ns)
    if q.until_ns is not None:
        clauses.append(f"{time_alias}.time_ns < ?")
        params.append(q.until_ns)
    if cursor is not None:
        clauses.append(f"({time_alias}.time_ns, {time_alias}.uuid) < (?, ?)")
        params += list(cursor)
    return " AND ".join(clauses), params


# An output field's value as base.field_text writes it (JSON null: NULL, which matches nothing).
_FIELD_TEXT = (
    "CASE json_type(CAST(e.json AS TEXT), ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
    "WHEN 'array' THEN json_extract(CAST(e.json AS TEXT), ?) "
    "ELSE CAST(json_extract(CAST(e.json AS TEXT), ?) AS TEXT) END"
)


def json_path(name: str) -> str:
    """The JSON path of an output field; names are checked by the API (no double quote)."""
    return f'$.output_fields."{name}"'


def _triage_clause(states: list[str]) -> tuple[str, list[Any]]:
    """Events without a triage row are "new"."""
    chosen = set(states)
    if "new" in chosen:
        others = [s for s in TRIAGE_STATES if s not in chosen]
        if not others:
            return "", []
        return f"e.uuid NOT IN (SELECT uuid FROM triage WHERE status IN ({marks(len(others))}))", \
            others
    wanted = [s for s in TRIAGE_STATES if s in chosen]
    return f"e.uuid IN (SELECT uuid FROM triage WHERE status IN ({marks(len(wanted))}))", wanted


def page_queries(
    q: EventQuery, cursor: tuple[int, str] | None, limit: int
) -> list[tuple[str, list[Any]]]:
    """One ordered, LIMITed query per value of the most selective list filter.

    SQLite cannot merge several ranges of one index in order, so ``rule IN (a, b)`` would
    read and sort every match; one query per value reads at most ``limit`` rows each, and the
    caller merges. Without list filters, ``min_priority`` is split by level the same way.
    """
    select = "SELECT e.time_ns, e.uuid, e.json FROM "
    if q.tags:
        # CROSS JOIN pins event_tags as the outer loop: its PK walks one tag in time order.
        body, params = where(q, cursor, include_tags=False, time_alias="t")
        text = (select + "event_tags t CROSS JOIN events e ON e.uuid = t.uuid "
                f"WHERE t.tag = ? AND {body} ORDER BY t.time_ns DESC, t.uuid DESC LIMIT ?")
        return [(text, [tag, *params, limit]) for tag in dict.fromkeys(q.tags)]
    if q.triage and "new" not in q.triage:
        # Triaged events are few: walk the triage index in time order, one status at a time.
        body, params = where(replace(q, triage=[]), cursor, time_alias="t")
        text = (select + "triage t CROSS JOIN events e ON e.uuid = t.uuid "
                f"WHERE t.status = ? AND {body} ORDER BY t.time_ns DESC, t.uuid DESC LIMIT ?")
        return [(text, [status, *params, limit]) for status in dict.fromkeys(q.triage)]
    lists = [(name, values) for name, values in
             (("rules", q.rules), ("hostnames", q.hostnames), ("sources", q.sources)) if values]
    arms: list[tuple[EventQuery, str, list[Any]]]
    if lists:
        name, values = min(lists, key=lambda item: len(item[1]))
        arms = [(replace(q, **{name: [value]}), "", []) for value in dict.fromkeys(values)]
    elif q.min_priority is not None:
        rest = replace(q, min_priority=None)
        arms = [(rest, "e.priority = ? AND ", [int(p)]) for p in Priority if p >= q.min_priority]
    else:
        arms = [(q, "", [])]
    out = []
    for arm, extra, extra_params in arms:
        body, params = where(arm, cursor)
        text = (select + f"events e WHERE {extra}{body} "
                "ORDER BY e.time_ns DESC, e.uuid DESC LIMIT ?")
        out.append((text, [*extra_params, *params, limit]))
    return out


def stats_time_only(conn: sqlite3.Connection, q: EventQuery, bucket_ns: int) -> Stats:
    """Stats for a query with a time range at most. Over most of the stored events, each count
    walks the index of its column, in its order (no temporary b-tree); over a short range,
    walking those whole indexes would cost what the store holds, so the counts come from one
    walk of the range of the time index instead, which covers every column counted."""
    body, params = where(q)
    # two queries: SQLite answers a lone min() or max() from the index end, not both together
    low, high = (conn.execute(f"SELECT {f}(e.time_ns) FROM events e WHERE {body}",
                              params).fetchone()[0] for f in ("min", "max"))
    stored_low, stored_high = (conn.execute(f"SELECT {f}(time_ns) FROM events").fetchone()[0]
                               for f in ("min", "max"))
    short = (low is not None and stored_low is not None
             and (high - low) * _SHORT_RANGE < stored_high - stored_low)

    def group(column: str, index: str) -> dict[Any, int]:
        return dict(conn.execute(f"SELECT e.{column}, count(*) FROM events e INDEXED BY {index} "
                                 f"WHERE {body} GROUP BY 1", params).fetchall())

    first = q.since_ns if q.since_ns is not None else low
    last = q.until_ns - 1 if q.until_ns is not None else high
    buckets = []
    if first is not None and last is not None and last >= first:
        start, count = bucket_range(first, last, bucket_ns)
        for i in range(count):  # range counts: cheaper than GROUP BY's temporary b-tree
            lo = max(start + i * bucket_ns, first)
            hi = min(start + (i + 1) * bucket_ns - 1, last)
            (n,) = conn.execute("SELECT count(*) FROM events INDEXED BY events_time "
                                "WHERE time_ns BETWEEN ? AND ?", (lo, hi)).fetchone()
            buckets.append((start + i * bucket_ns, n))
    if short:
        # One pass over the range; the combinations are few (tags and sources come with rules).
        combos = conn.execute(
            "SELECT e.priority, e.rule, e.source, e.hostname, e.tags, count(*) "
            f"FROM events e INDEXED BY events_time WHERE {body} GROUP BY 1, 2, 3, 4, 5", params)
        counts: list[Counter[Any]] = [Counter() for _ in range(5)]
        for *values, n in combos:
            for counter, value in zip(counts[:4], values, strict=False):
                counter[value] += n
            for tag in orjson.loads(values[4]):
                counts[4][tag] += n
        return _stats(*(dict(c) for c in counts), buckets)
    tag_body, tag_params = where(q, time_alias="t")
    by_tag = dict(conn.execute(
        f"SELECT t.tag, count(*) FROM event_tags t WHERE {tag_body} GROUP BY 1", tag_params
    ).fetchall())
    return _stats(group("priority", "events_priority"), group("rule", "events_rule"),
                  group("source", "events_source"), group("hostname", "events_host"),
                  by_tag, buckets)


def stats_filtered(conn: sqlite3.Connection, q: EventQuery, bucket_ns: int) -> Stats:
    """Stats for a filtered query: one pass over the matches into a temporary table, then each
    count over that. A text search reads every row, so it must not run once per count; without
    text, the time index covers every column, which beats a filter index plus a row lookup per
    match."""
    body, params = where(q)
    table = "events e" if q.text else "events e INDEXED BY events_time"
    conn.execute("DROP TABLE IF EXISTS temp.stats_rows")
    conn.execute(
        "CREATE TEMP TABLE stats_rows AS SELECT e.time_ns / ? AS bucket, e.priority, e.rule, "
        f"e.source, e.hostname, e.tags FROM {table} WHERE {body}",
        [bucket_ns, *params],
    )
    try:
        def group(column: str) -> dict[Any, int]:
            return dict(conn.execute(
                f"SELECT {column}, count(*) FROM stats_rows GROUP BY 1").fetchall())

        per_bucket = group("bucket")
        first = q.since_ns if q.since_ns is not None else (
            min(per_bucket) * bucket_ns if per_bucket else None)
        last = q.until_ns - 1 if q.until_ns is not None else (
            (max(per_bucket) + 1) * bucket_ns - 1 if per_bucket else None)
        buckets = []
        if first is not None and last is not None and last >= first:
            start, count = bucket_range(first, last, bucket_ns)
            buckets = [(start + i * bucket_ns, per_bucket.get(start // bucket_ns + i, 0))
                       for i in range(count)]
        by_tag: Counter[str] = Counter()
        for tags, n in group("tags").items():  # few distinct sets: tags come with rules
            for tag in orjson.loads(tags):
                by_tag[tag] += n
        return _stats(group("priority"), group("rule"), group("source"), group("hostname"),
                      dict(by_tag), buckets)
    finally:
        conn.execute("DROP TABLE temp.stats_rows")


def _stats(
    by_priority: dict[int, int],
    by_rule: dict[str, int],
    by_source: dict[str, int],
    by_hostname: dict[str, int],
    by_tag: dict[str, int],
    buckets: list[tuple[int, int]],
) -> Stats:
    labels = {Priority(p).label: n for p, n in sorted(by_priority.items())}
    return Stats(total=sum(labels.values()), by_priority=labels, by_rule=by_rule,
                 by_source=by_source, by_hostname=by_hostname, by_tag=by_tag, buckets=buckets)


def bucket_range(first_ns: int, last_ns: int, bucket_ns: int) -> tuple[int, int]:
    """Aligned start of the first bucket and the number of buckets covering [first, last]."""
    start = first_ns // bucket_ns * bucket_ns
    count = (last_ns // bucket_ns * bucket_ns - start) // bucket_ns + 1
    if count > MAX_BUCKETS:
        raise ValueError(
            f"{count} time buckets requested, at most {MAX_BUCKETS}: "
            "use a larger bucket or a shorter time range"
        )
    return start, count
