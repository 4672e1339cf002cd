"""The Store contract, run against every backend (SQLite file, real Redis).

Every assertion is an exact value: a backend that loses, duplicates or misorders anything fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import pytest

from sidekick.alert import Alert, Priority, now_ns
from sidekick.store.base import EventQuery, QueueStats, Store

S = 1_000_000_000
BASE = 1_700_000_000 * S  # not a multiple of 60 s, so bucket alignment is exercised
WINDOW = 600.0


def make_alert(
    uuid: str,
    *,
    time_ns: int = BASE,
    rule: str = "Rule A",
    priority: Priority = Priority.WARNING,
    source: str = "syscalls",
    hostname: str = "node-1",
    tags: Iterable[str] = (),
    output: str = "",
    fields: dict | None = None,
) -> Alert:
    return Alert(
        rule=rule,
        priority=priority,
        time_ns=time_ns,
        output_fields=fields or {"proc.name": "sh", "n": 1},
        output=output or f"{rule} happened ({uuid})",
        source=source,
        tags=sorted(tags),
        hostname=hostname,
        uuid=uuid,
    )


async def accept(
    store: Store, alerts: list[Alert], outputs: list[str], window: float = WINDOW
) -> list[bool]:
    return await store.accept([(a, list(outputs)) for a in alerts], window)


def uuids(items: Iterable) -> list[str]:
    return [(getattr(i, "alert", None) or i).uuid for i in items]


# --- ingest and dedup ---------------------------------------------------------------------


async def test_accept_new_then_duplicate_within_window(store: Store) -> None:
    a, b = make_alert("a"), make_alert("b")
    assert await accept(store, [a, b], ["slack"]) == [True, True]
    assert await accept(store, [a], ["slack"]) == [False]
    assert await accept(store, [make_alert("c"), b], ["slack"]) == [True, False]
    leased = await store.lease("slack", 10, 30, 0)
    assert sorted(uuids(leased)) == ["a", "b", "c"]
    page = await store.events(EventQuery())
    assert sorted(uuids(page.events)) == ["a", "b", "c"]


async def test_duplicates_within_one_batch(store: Store) -> None:
    a = make_alert("a")
    assert await accept(store, [a, make_alert("b"), a, a], ["slack"]) == [True, True, False, False]
    assert (await store.queue_stats(["slack"]))["slack"].pending == 2
    assert len((await store.events(EventQuery())).events) == 2


async def test_duplicates_across_concurrent_calls(store: Store) -> None:
    results = await asyncio.gather(
        *(accept(store, [make_alert("same"), make_alert(f"own-{i}")], ["slack"]) for i in range(20))
    )
    assert sum(r[0] for r in results) == 1
    assert all(r[1] for r in results)
    assert (await store.queue_stats(["slack"]))["slack"].pending == 21


async def test_duplicate_accepted_again_after_window(store: Store) -> None:
    a = make_alert("a")
    assert await accept(store, [a], ["slack"], window=0.05) == [True]
    assert await accept(store, [a], ["slack"], window=0.05) == [False]
    await asyncio.sleep(0.15)
    assert await accept(store, [a], ["slack"], window=0.05) == [True]
    assert (await store.queue_stats(["slack"]))["slack"].pending == 2
    assert uuids((await store.events(EventQuery())).events) == ["a"]
    assert await store.get_event("a") == a


async def test_dedup_survives_retention_of_the_event(store: Store) -> None:
    old = make_alert("old", time_ns=now_ns() - 7200 * S)
    assert await accept(store, [old], []) == [True]
    assert await store.enforce_retention(3600, 1000) == 1
    assert await store.get_event("old") is None
    assert await accept(store, [old], ["slack"]) == [False]
    assert (await store.queue_stats(["slack"]))["slack"].pending == 0


async def test_deliveries_one_per_named_output(store: Store) -> None:
    a, b, c = make_alert("a"), make_alert("b"), make_alert("c")
    before = now_ns()
    await store.accept([(a, ["slack", "webhook"]), (b, ["slack"]), (c, [])], WINDOW)
    after = now_ns()
    stats = await store.queue_stats(["slack", "webhook", "s3"])
    assert stats["s3"] == QueueStats(pending=0, oldest_pending_ns=None, dead=0)
    assert (stats["slack"].pending, stats["webhook"].pending) == (2, 1)
    slack = await store.lease("slack", 10, 30, 0)
    assert uuids(slack) == ["a", "b"]  # oldest first
    assert [d.output for d in slack] == ["slack", "slack"]
    assert [d.attempts for d in slack] == [0, 0]
    assert all(before <= d.accepted_ns <= after for d in slack)
    assert slack[0].alert == a and slack[1].alert == b
    webhook = await store.lease("webhook", 10, 30, 0)
    assert uuids(webhook) == ["a"] and webhook[0].output == "webhook"
    assert await store.lease("s3", 10, 30, 0) == []
    assert await store.get_event("c") == c  # stored even with no output


# --- delivery queue -----------------------------------------------------------------------


async def test_lease_limit_and_complete(store: Store) -> None:
    for i in range(5):
        await accept(store, [make_alert(f"a{i}")], ["slack"])
    first = await store.lease("slack", 2, 30, 0)
    second = await store.lease("slack", 2, 30, 0)
    third = await store.lease("slack", 2, 30, 0)
    assert (uuids(first), uuids(second), uuids(third)) == (["a0", "a1"], ["a2", "a3"], ["a4"])
    assert await store.lease("slack", 2, 30, 0) == []
    assert (await store.queue_stats(["slack"]))["slack"].pending == 5  # leased is still pending
    await store.complete(first + third)
    assert (await store.queue_stats(["slack"]))["slack"].pending == 2
    await store.complete(second)
    assert (await store.queue_stats(["slack"]))["slack"] == QueueStats(0, None, 0)


async def test_expired_lease_returns_to_queue(store: Store) -> None:
    await accept(store, [make_alert("a"), make_alert("b")], ["slack"])
    leased = await store.lease("slack", 10, 0.3, 0)
    assert uuids(leased) == ["a", "b"]
    await store.complete([leased[1]])
    assert await store.lease("slack", 10, 0.3, 0) == []
    await asyncio.sleep(0.5)
    again = await store.lease("slack", 10, 30, 0)
    assert uuids(again) == ["a"]
    assert again[0].attempts == 0  # an expired lease is not a failed attempt
    assert again[0].accepted_ns == leased[0].accepted_ns


async def test_retry_is_not_due_before_its_time(store: Store) -> None:
    await accept(store, [make_alert("a")], ["slack"])
    [d] = await store.lease("slack", 10, 30, 0)
    await store.retry(d, now_ns() + int(0.4 * S), "HTTP 503")
    assert await store.lease("slack", 10, 30, 0) == []
    assert (await store.queue_stats(["slack"]))["slack"].pending == 1
    await asyncio.sleep(0.5)
    [again] = await store.lease("slack", 10, 30, 0)
    assert again.alert.uuid == "a" and again.attempts == 1


async def test_attempts_count_across_retries_and_burial(store: Store) -> None:
    alert = make_alert("a")
    await accept(store, [alert], ["slack"])
    seen = []
    for _ in range(3):
        [d] = await store.lease("slack", 10, 30, 0)
        seen.append(d.attempts)
        await store.retry(d, now_ns(), "boom")
    [d] = await store.lease("slack", 10, 30, 0)
    seen.append(d.attempts)
    assert seen == [0, 1, 2, 3]
    await store.bury(d, "gave up after 4 attempts: boom")
    [dead] = await store.dead_letters("slack", 10)
    assert dead.attempts == 4  # the attempt that led to burial counts
    assert dead.alert == alert and dead.reason == "gave up after 4 attempts: boom"
    assert dead.accepted_ns == d.accepted_ns and dead.output == "slack"


async def test_bury_dead_letters_and_redrive(store: Store) -> None:
    await store.accept(
        [
            (make_alert("a"), ["slack"]),
            (make_alert("b"), ["slack", "webhook"]),
            (make_alert("c"), ["slack"]),
        ],
        WINDOW,
    )
    slack = await store.lease("slack", 10, 30, 0)
    [wh] = await store.lease("webhook", 10, 30, 0)
    before = now_ns()
    await store.bury(slack[0], "HTTP 400")
    await asyncio.sleep(0.01)
    await store.bury(wh, "HTTP 404")
    await asyncio.sleep(0.01)
    await store.bury(slack[1], "HTTP 401")
    after = now_ns()
    await store.complete([slack[2]])
    dead = await store.dead_letters(None, 10)
    assert [(d.output, d.alert.uuid, d.reason) for d in dead] == [
        ("slack", "b", "HTTP 401"),
        ("webhook", "b", "HTTP 404"),
        ("slack", "a", "HTTP 400"),
    ]
    assert all(before <= d.dead_ns <= after for d in dead)
    assert [d.attempts for d in dead] == [1, 1, 1]
    assert uuids(await store.dead_letters("slack", 10)) == ["b", "a"]
    assert uuids(await store.dead_letters("slack", 1)) == ["b"]
    stats = await store.queue_stats(["slack", "webhook"])
    assert stats["slack"] == QueueStats(0, None, 2)
    assert stats["webhook"] == QueueStats(0, None, 1)

    a_id = dead[2].id
    assert await store.redrive("slack", ["no-such-id"]) == 0
    assert await store.redrive("slack", [a_id]) == 1
    assert uuids(await store.dead_letters(None, 10)) == ["b", "b"]
    [again] = await store.lease("slack", 10, 30, 0)
    assert again.alert.uuid == "a" and again.attempts == 0
    assert await store.redrive("slack", None) == 1
    assert (await store.queue_stats(["slack"]))["slack"].dead == 0
    [b_again] = await store.lease("slack", 10, 30, 0)
    assert b_again.alert.uuid == "b"
    assert await store.redrive(None, None) == 1  # the webhook one
    assert uuids(await store.lease("webhook", 10, 30, 0)) == ["b"]
    assert await store.dead_letters(None, 10) == []


async def test_queue_stats_oldest_pending(store: Store) -> None:
    await accept(store, [make_alert("a")], ["slack"])
    await asyncio.sleep(0.01)
    await accept(store, [make_alert("b")], ["slack"])
    first, second = await store.lease("slack", 10, 30, 0)
    assert first.accepted_ns < second.accepted_ns
    stats = (await store.queue_stats(["slack"]))["slack"]
    assert stats == QueueStats(pending=2, oldest_pending_ns=first.accepted_ns, dead=0)
    await store.complete([first])
    stats = (await store.queue_stats(["slack"]))["slack"]
    assert stats == QueueStats(pending=1, oldest_pending_ns=second.accepted_ns, dead=0)


async def test_lease_wait_wakes_early_on_accept(store: Store) -> None:
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(store.lease("slack", 10, 30, 5.0))
    other = asyncio.create_task(store.lease("webhook", 10, 30, 0.5))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    start = loop.time()
    await accept(store, [make_alert("a")], ["slack"])
    got = await asyncio.wait_for(waiter, 3.0)
    assert loop.time() - start < 1.0
    assert uuids(got) == ["a"]
    assert await other == []


async def test_lease_wait_wakes_when_a_retry_falls_due(store: Store) -> None:
    loop = asyncio.get_running_loop()
    await accept(store, [make_alert("a")], ["slack"])
    [d] = await store.lease("slack", 10, 30, 0)
    await store.retry(d, now_ns() + int(0.4 * S), "later")
    start = loop.time()
    got = await store.lease("slack", 10, 30, 5.0)
    elapsed = loop.time() - start
    assert uuids(got) == ["a"] and got[0].attempts == 1
    assert 0.3 <= elapsed < 2.0


async def test_lease_wait_wakes_on_redrive(store: Store) -> None:
    loop = asyncio.get_running_loop()
    await accept(store, [make_alert("a")], ["slack"])
    [d] = await store.lease("slack", 10, 30, 0)
    await store.bury(d, "nope")
    waiter = asyncio.create_task(store.lease("slack", 10, 30, 5.0))
    await asyncio.sleep(0.2)
    start = loop.time()
    assert await store.redrive("slack", None) == 1
    got = await asyncio.wait_for(waiter, 3.0)
    assert loop.time() - start < 1.0
    assert uuids(got) == ["a"]


async def test_lease_wait_times_out_empty(store: Store) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await store.lease("slack", 10, 30, 0.3) == []
    assert 0.25 <= loop.time() - start < 2.0


# --- recent events ------------------------------------------------------------------------

RULES = ["Rule A", "Rule B", "Rule C"]


def dataset() -> list[Alert]:
    """40 alerts; every three share a time, so ties are ordered by uuid."""
    alerts = []
    for i in range(40):
        tags = [
            t for t, on in (("net", i % 2 == 0), ("fs", i % 3 == 0), ("mitre", i % 7 == 0)) if on
        ]
        alerts.append(
            make_alert(
                f"u-{(i * 37) % 100:03d}",  # uuid order differs from insertion order
                time_ns=BASE + (i // 3) * 20 * S,
                rule=RULES[i % 3] if i % 4 else RULES[(i // 4) % 3],
                priority=Priority(1 + i % 8),
                source="k8s_audit" if i % 5 == 0 else "syscalls",
                hostname=f"node-{i % 4}",
                tags=tags,
            )
        )
    return alerts


def expected(alerts: list[Alert], q: EventQuery) -> list[Alert]:
    def match(a: Alert) -> bool:
        text = q.text.lower()
        values = [str(v).lower() for v in a.output_fields.values()]
        return (
            (q.min_priority is None or a.priority >= q.min_priority)
            and (not q.rules or a.rule in q.rules)
            and (not q.sources or a.source in q.sources)
            and (not q.hostnames or a.hostname in q.hostnames)
            and (not q.tags or bool(set(q.tags) & set(a.tags)))
            and (
                not text
                or text in a.output.lower()
                or text in a.rule.lower()
                or any(text in v for v in values)
            )
            and (q.since_ns is None or a.time_ns >= q.since_ns)
            and (q.until_ns is None or a.time_ns < q.until_ns)
        )

    return sorted(filter(match, alerts), key=lambda a: (a.time_ns, a.uuid), reverse=True)


async def all_pages(store: Store, q: EventQuery) -> list[list[Alert]]:
    pages = []
    while True:
        page = await store.events(q)
        pages.append(page.events)
        if page.next_cursor is None:
            return pages
        assert len(pages) < 100, "pagination does not terminate"
        q.cursor = page.next_cursor


QUERIES = [
    {},
    {"min_priority": Priority.ERROR},
    {"rules": ["Rule B"]},
    {"rules": ["Rule A", "Rule C"]},
    {"sources": ["k8s_audit"]},
    {"hostnames": ["node-1", "node-3"]},
    {"tags": ["mitre"]},
    {"tags": ["net", "fs"]},
    {"since_ns": BASE + 60 * S, "until_ns": BASE + 200 * S},
    {"rules": ["Rule A"], "tags": ["net"], "min_priority": Priority.NOTICE},
    {"hostnames": ["node-0", "node-2"], "sources": ["syscalls"], "since_ns": BASE + 40 * S},
    {"tags": ["fs", "mitre"], "hostnames": ["node-0", "node-1", "node-3"]},
    {"min_priority": Priority.WARNING, "until_ns": BASE + 140 * S},
]


@pytest.mark.parametrize("filters", QUERIES, ids=lambda f: ",".join(f) or "none")
async def test_events_filters_and_pagination(store: Store, filters: dict) -> None:
    alerts = dataset()
    assert all(await accept(store, alerts, []))
    want = expected(alerts, EventQuery(**filters))
    assert want, "the dataset must exercise this filter"
    pages = await all_pages(store, EventQuery(limit=4, **filters))
    got = [a for page in pages for a in page]
    assert uuids(got) == uuids(want)  # newest first, no duplicate, no gap
    assert got == want
    assert [len(p) for p in pages] == [4] * (len(want) // 4) + (
        [len(want) % 4] if len(want) % 4 else []
    )
    single = await store.events(EventQuery(limit=1000, **filters))
    assert single.events == want and single.next_cursor is None


async def test_events_pagination_over_equal_times(store: Store) -> None:
    same = [make_alert(f"x{i:02d}", time_ns=BASE) for i in range(10)]
    await accept(store, same, [])
    pages = await all_pages(store, EventQuery(limit=3))
    assert [uuids(p) for p in pages] == [
        ["x09", "x08", "x07"],
        ["x06", "x05", "x04"],
        ["x03", "x02", "x01"],
        ["x00"],
    ]


async def test_events_text_search(store: Store) -> None:
    alerts = [
        make_alert("o", output="Shell spawned by BASH in container", rule="Terminal shell"),
        make_alert("r", output="something", rule="Read Sensitive File"),
        make_alert("f", output="nothing here", fields={"proc.name": "CURL", "fd.num": 3}),
        make_alert("l", output="x", fields={"proc.args": ["-o", "Wget-Target"]}),
    ]
    await accept(store, alerts, [])

    async def found(text: str) -> list[str]:
        return sorted(uuids((await store.events(EventQuery(text=text))).events))

    assert await found("bash") == ["o"]
    assert await found("SENSITIVE file") == ["r"]
    assert await found("curl") == ["f"]
    assert await found("wget-t") == ["l"]
    assert await found("shell") == ["o"]
    assert await found("no such thing") == []


async def test_events_limit_larger_than_total_and_empty(store: Store) -> None:
    page = await store.events(EventQuery())
    assert page.events == [] and page.next_cursor is None
    await accept(store, [make_alert("a"), make_alert("b", time_ns=BASE + 1)], [])
    page = await store.events(EventQuery(limit=2))
    assert uuids(page.events) == ["b", "a"] and page.next_cursor is None


async def test_events_malformed_cursor(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.events(EventQuery(cursor="%%%not-a-cursor"))


async def test_get_event(store: Store) -> None:
    a = make_alert(
        "a", tags=["x", "y"], fields={"k": "v", "n": 2.5, "b": True, "z": None, "l": ["p", 1]}
    )
    await accept(store, [a], [])
    assert await store.get_event("a") == a
    assert await store.get_event("missing") is None


async def test_stats_counts_and_buckets(store: Store) -> None:
    # BASE is 20 s past a minute boundary (m0): offsets 0 and 30 fall in the first minute.
    specs = [
        (0, "Rule A", Priority.WARNING, "syscalls", "n1", ["net"]),
        (30, "Rule A", Priority.ERROR, "syscalls", "n2", ["net", "fs"]),
        (45, "Rule B", Priority.WARNING, "k8s_audit", "n1", []),
        (200, "Rule B", Priority.CRITICAL, "syscalls", "n1", ["fs"]),
    ]
    alerts = [
        make_alert(
            f"s{i}", time_ns=BASE + off * S, rule=r, priority=p, source=src, hostname=h, tags=t
        )
        for i, (off, r, p, src, h, t) in enumerate(specs)
    ]
    await accept(store, alerts, [])
    m0 = BASE - 20 * S
    st = await store.stats(EventQuery(limit=1, cursor="ignored"), 60)
    assert st.total == 4
    assert st.by_priority == {"Warning": 2, "Error": 1, "Critical": 1}
    assert st.by_rule == {"Rule A": 2, "Rule B": 2}
    assert st.by_source == {"syscalls": 3, "k8s_audit": 1}
    assert st.by_hostname == {"n1": 3, "n2": 1}
    assert st.by_tag == {"net": 2, "fs": 2}
    assert st.buckets == [(m0, 2), (m0 + 60 * S, 1), (m0 + 120 * S, 0), (m0 + 180 * S, 1)]

    ranged = await store.stats(EventQuery(since_ns=BASE - 100 * S, until_ns=BASE + 60 * S), 60)
    assert ranged.total == 3
    assert ranged.buckets == [(m0 - 120 * S, 0), (m0 - 60 * S, 0), (m0, 2), (m0 + 60 * S, 1)]

    filtered = await store.stats(EventQuery(tags=["fs"]), 60)
    assert filtered.total == 2
    assert filtered.by_rule == {"Rule A": 1, "Rule B": 1}
    assert filtered.by_tag == {"net": 1, "fs": 2}
    assert filtered.buckets == [(m0, 1), (m0 + 60 * S, 0), (m0 + 120 * S, 0), (m0 + 180 * S, 1)]

    hour = await store.stats(EventQuery(rules=["Rule B"], min_priority=Priority.ERROR), 3600)
    assert (hour.total, hour.by_hostname, hour.by_tag) == (1, {"n1": 1}, {"fs": 1})
    assert hour.buckets == [((BASE + 200 * S) // (3600 * S) * 3600 * S, 1)]

    empty = await store.stats(EventQuery(rules=["nope"]), 60)
    assert (empty.total, empty.by_priority, empty.by_tag, empty.buckets) == (0, {}, {}, [])


async def test_stats_since_unaligned_without_until(store: Store) -> None:
    # since falls mid-bucket and the newest event in that same bucket: one bucket, counted
    await accept(store, [make_alert("a", time_ns=BASE), make_alert("b", time_ns=BASE + S)], [])
    m0 = BASE - 20 * S
    for q in (
        EventQuery(since_ns=BASE - 5 * S),
        EventQuery(since_ns=BASE - 5 * S, rules=["Rule A"]),
    ):
        st = await store.stats(q, 60)
        assert (st.total, st.buckets) == (2, [(m0, 2)])


async def test_stats_bucket_cap(store: Store) -> None:
    await accept(store, [make_alert("a")], [])
    ok = await store.stats(EventQuery(since_ns=0, until_ns=1000 * 60 * S), 60)
    assert len(ok.buckets) == 1000
    with pytest.raises(ValueError):
        await store.stats(EventQuery(since_ns=0, until_ns=1000 * 60 * S + 1), 60)
    with pytest.raises(ValueError):
        await store.stats(EventQuery(), 0)
    far = make_alert("far", time_ns=BASE + 2000 * 60 * S)
    await accept(store, [far], [])
    with pytest.raises(ValueError):
        await store.stats(EventQuery(), 60)  # oldest..newest spans 2001 buckets


async def test_retention_by_age(store: Store) -> None:
    now = now_ns()
    alerts = [
        make_alert("old", time_ns=now - 7200 * S, tags=["gone"]),
        make_alert("mid", time_ns=now - 1800 * S, tags=["kept"]),
        make_alert("new", time_ns=now, tags=["kept", "gone"]),
    ]
    await accept(store, alerts, ["slack"])
    assert await store.enforce_retention(3600, 1000) == 1
    assert uuids((await store.events(EventQuery())).events) == ["new", "mid"]
    assert await store.get_event("old") is None
    assert uuids((await store.events(EventQuery(tags=["gone"]))).events) == ["new"]
    assert (await store.stats(EventQuery(), 3600)).by_tag == {"kept": 2, "gone": 1}
    assert await store.enforce_retention(3600, 1000) == 0
    # deliveries are not affected: the pending one still carries its whole alert
    leased = await store.lease("slack", 10, 30, 0)
    assert [d.alert for d in leased] == alerts


async def test_retention_with_a_huge_max_age_deletes_nothing(store: Store) -> None:
    await accept(store, [make_alert("a", time_ns=now_ns())], [])
    assert await store.enforce_retention(1e12, 1000) == 0
    assert uuids((await store.events(EventQuery())).events) == ["a"]


async def test_retention_by_count_keeps_the_newest(store: Store) -> None:
    now = now_ns()
    alerts = [
        make_alert(f"c{i:02d}", time_ns=now - (10 - i // 2) * S, tags=["t"]) for i in range(10)
    ]  # pairs share a time
    await accept(store, alerts, [])
    assert await store.enforce_retention(3600, 5) == 5
    assert uuids((await store.events(EventQuery())).events) == ["c09", "c08", "c07", "c06", "c05"]
    assert (await store.stats(EventQuery(), 3600)).by_tag == {"t": 5}
    assert await store.enforce_retention(3600, 5) == 0


async def test_persistence_across_reopen(store_factory: Callable[..., Store]) -> None:
    first = store_factory()
    await first.open()
    try:
        alerts = [make_alert(f"p{i}", time_ns=BASE + i * S) for i in range(4)]
        await accept(first, alerts, ["slack"])
        d0, d1, d2, _d3 = await first.lease("slack", 10, 0.2, 0)
        await first.complete([d0])
        await first.retry(d1, now_ns(), "503")
        await first.bury(d2, "400")
        oldest = (await first.queue_stats(["slack"]))["slack"].oldest_pending_ns
    finally:
        await first.close()
    second = store_factory()
    await second.open()
    try:
        assert uuids((await second.events(EventQuery())).events) == ["p3", "p2", "p1", "p0"]
        assert await second.get_event("p2") == alerts[2]
        assert (await second.queue_stats(["slack"]))["slack"] == QueueStats(2, oldest, 1)
        assert uuids(await second.dead_letters("slack", 10)) == ["p2"]
        assert await accept(second, [alerts[0]], ["slack"]) == [False]  # dedup persisted
        await asyncio.sleep(0.3)  # d3's lease expires
        leased = await second.lease("slack", 10, 30, 0)
        assert sorted((d.alert.uuid, d.attempts) for d in leased) == [("p1", 1), ("p3", 0)]
        await second.ping()
    finally:
        await second.close()


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_many_concurrent_accepts_all_stored(store: Store) -> None:
    start = time.monotonic()
    results = await asyncio.gather(
        *(
            accept(
                store, [make_alert(f"m{i:03d}-{j}", time_ns=BASE + i) for j in range(3)], ["slack"]
            )
            for i in range(100)
        )
    )
    assert all(all(r) for r in results)
    assert (await store.queue_stats(["slack"]))["slack"].pending == 300
    assert (await store.stats(EventQuery(), 3600)).total == 300
    assert time.monotonic() - start < 30
