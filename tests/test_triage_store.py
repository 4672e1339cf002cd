"""Triage, field filters and delivery records: the Store contract on both backends."""

from __future__ import annotations

import asyncio

import pytest

from sidekick.aggregation import Aggregation
from sidekick.alert import Priority, now_ns
from sidekick.store.base import EventQuery, Store, Triage
from tests.test_store import BASE, S, accept, make_alert, uuids

WINDOW_NS = S // 2


def triage(status: str, note: str = "", actor: str = "ana", at_ns: int = 1) -> Triage:
    return Triage(status, note, actor, at_ns)


async def seed(store: Store, n: int = 10) -> list[str]:
    alerts = [make_alert(f"e{i:02d}", time_ns=BASE + i * S, rule=f"Rule {'AB'[i % 2]}",
                         fields={"proc.name": ["sh", "bash"][i % 2], "proc.pid": 100 + i,
                                 "fd.name": None, "container.privileged": i < 3,
                                 "proc.aname": ["a", "b"]})
              for i in range(n)]
    assert all(await accept(store, alerts, []))
    return [a.uuid for a in alerts]


async def page_all(store: Store, query: EventQuery) -> list[str]:
    found: list[str] = []
    query.limit, query.cursor = 3, None
    while True:
        page = await store.events(query)
        found += uuids(page.events)
        if page.next_cursor is None:
            return found
        query.cursor = page.next_cursor


async def test_triage_set_read_history_and_unknown_uuids(store: Store) -> None:
    await seed(store, 4)
    looking = triage("acknowledged", "look", at_ns=5)
    assert await store.set_triage(["e01", "e02", "missing"], looking) == 2
    assert await store.set_triage(["e02"], triage("false_positive", "benign <b>", "bo", 9)) == 1
    current = await store.triage_of(["e00", "e01", "e02", "missing"])
    assert current == {"e01": triage("acknowledged", "look", at_ns=5),
                       "e02": triage("false_positive", "benign <b>", "bo", 9)}
    assert await store.triage_history("e02") == [triage("acknowledged", "look", at_ns=5),
                                                  triage("false_positive", "benign <b>", "bo", 9)]
    assert await store.triage_history("e00") == []
    assert await store.set_triage([], triage("resolved")) == 0


async def test_triage_filter_pages_and_stats(store: Store) -> None:
    ids = await seed(store, 10)
    await store.set_triage(["e01", "e05", "e08"], triage("acknowledged"))
    await store.set_triage(["e05"], triage("resolved"))  # moved: no longer acknowledged
    await store.set_triage(["e07"], triage("new", "reopened"))
    newest_first = ids[::-1]
    assert await page_all(store, EventQuery(triage=["acknowledged"])) == ["e08", "e01"]
    assert await page_all(store, EventQuery(triage=["acknowledged", "resolved"])) == \
        ["e08", "e05", "e01"]
    untriaged = [u for u in newest_first if u not in ("e01", "e05", "e08")]
    assert await page_all(store, EventQuery(triage=["new"])) == untriaged
    assert await page_all(store, EventQuery(triage=["new", "resolved"])) == \
        [u for u in newest_first if u not in ("e01", "e08")]
    assert await page_all(store, EventQuery(triage=list(("new", "acknowledged",
                                                          "false_positive", "resolved")))) \
        == newest_first
    both = EventQuery(triage=["acknowledged"], rules=["Rule A"], since_ns=BASE + 2 * S)
    assert await page_all(store, both) == ["e08"]
    stats = await store.stats(EventQuery(triage=["acknowledged", "resolved"],
                                         since_ns=BASE, until_ns=BASE + 10 * S), 10)
    assert stats.total == 3 and stats.by_rule == {"Rule B": 2, "Rule A": 1}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"proc.name": ["bash"]}, [9, 7, 5, 3, 1]),
        ({"proc.name": ["bash", "sh"]}, list(range(9, -1, -1))),
        ({"proc.pid": ["104"]}, [4]),
        ({"proc.name": ["sh"], "proc.pid": ["104", "105"]}, [4]),
        ({"container.privileged": ["true"]}, [2, 1, 0]),
        ({"proc.aname": ['["a","b"]']}, list(range(9, -1, -1))),
        ({"fd.name": [""]}, []),  # no value matches nothing
        ({"no.such": ["x"]}, []),
    ],
)
async def test_field_filters(store: Store, fields: dict, expected: list[int]) -> None:
    await seed(store, 10)
    want = [f"e{i:02d}" for i in expected]
    assert await page_all(store, EventQuery(fields=fields)) == want
    stats = await store.stats(EventQuery(fields=fields, since_ns=BASE, until_ns=BASE + 10 * S), 10)
    assert stats.total == len(want)


async def test_retention_takes_the_records_with_the_event(store: Store) -> None:
    old = make_alert("old", time_ns=now_ns() - 7200 * S)
    new = make_alert("new", time_ns=now_ns())
    await accept(store, [old, new], ["slack"])
    await store.set_triage(["old", "new"], triage("acknowledged"))
    [d_old, d_new] = sorted(await store.lease("slack", 10, 30, 0), key=lambda d: d.alert.uuid)
    assert await store.enforce_retention(3600, 1000) == 1
    await store.complete([d_new, d_old])  # delivered after the old event was removed
    assert await store.triage_of(["old", "new"]) == {"new": triage("acknowledged")}
    assert await store.triage_history("old") == []
    assert await store.delivery_log("old") == []
    assert [r.state for r in await store.delivery_log("new")] == ["delivered"]
    assert await page_all(store, EventQuery(triage=["acknowledged"])) == ["new"]


async def test_accepted_again_after_the_dedup_window_keeps_its_triage(store: Store) -> None:
    first = make_alert("x", time_ns=BASE)
    await store.accept([(first, [])], 0.05)
    await store.set_triage(["x"], triage("resolved"))
    await asyncio.sleep(0.1)
    again = make_alert("x", time_ns=BASE + 5 * S)
    assert await store.accept([(again, [])], 0.05) == [True]
    page = await store.events(EventQuery(triage=["resolved"]))
    assert [a.time_ns for a in page.events] == [BASE + 5 * S]
    assert (await store.triage_of(["x"]))["x"].status == "resolved"


async def test_delivery_log_follows_every_step(store: Store) -> None:
    alert = make_alert("a")
    await accept(store, [alert], ["slack", "webhook"])
    assert await store.delivery_log("a") == []  # queued: nothing happened yet
    [d] = await store.lease("slack", 10, 30, 0)
    due = now_ns() + 3600 * S
    await store.retry(d, now_ns(), "HTTP 503")
    [d] = await store.lease("slack", 10, 30, 0)
    await store.retry(d, due, "HTTP 429")
    [w] = await store.lease("webhook", 10, 30, 0)
    await store.bury(w, "HTTP 400")
    [dead] = await store.dead_letters("webhook", 10)
    assert await store.redrive("webhook", [dead.id]) == 1
    [w] = await store.lease("webhook", 10, 30, 0)
    await store.complete([w])
    log = await store.delivery_log("a")
    steps = [(r.output, r.state, r.attempts, r.reason) for r in log]
    assert steps == [
        ("slack", "retrying", 1, "HTTP 503"),
        ("slack", "retrying", 2, "HTTP 429"),
        ("webhook", "dead", 1, "HTTP 400"),
        ("webhook", "redriven", 0, ""),
        ("webhook", "delivered", 1, ""),
    ]
    assert log[1].next_ns == due
    assert log[2].dead_id == dead.id
    assert [r.at_ns for r in log] == sorted(r.at_ns for r in log)
    assert not any(r.summary for r in log)


async def test_aggregated_repeats_and_the_summary_are_recorded_on_their_events(
    store: Store,
) -> None:
    slack = {"slack": Aggregation(WINDOW_NS)}
    alerts = [make_alert(f"g{i}", priority=Priority.ERROR) for i in range(3)]
    await store.ingest([(a, ["slack"]) for a in alerts], 600, slack)
    [opener] = await store.lease("slack", 10, 30, 0)
    await store.complete([opener])
    await asyncio.sleep(WINDOW_NS / S + 0.05)
    await store.flush_windows(100)
    [summary] = await store.lease("slack", 10, 30, 0)
    await store.bury(summary, "HTTP 500")
    assert [(r.state, r.summary) for r in await store.delivery_log("g0")] == \
        [("delivered", False), ("dead", True)]
    for uuid in ("g1", "g2"):
        [record] = await store.delivery_log(uuid)
        assert (record.output, record.state) == ("slack", "aggregated")
        assert "aggregation window" in record.reason
    assert await store.redrive(None, None) == 1
    assert [r.state for r in await store.delivery_log("g0")][-1] == "redriven"


async def test_matching_uuids_follows_pages(store: Store) -> None:
    await seed(store, 10)
    assert await store.matching_uuids(EventQuery(rules=["Rule A"]), 1000) == \
        ["e08", "e06", "e04", "e02", "e00"]
    assert await store.matching_uuids(EventQuery(), 4) == ["e09", "e08", "e07", "e06"]


@pytest.mark.parametrize(("first", "last"), [(0, 100), (90, 100), (40, 45), (0, 3)])
async def test_stats_over_short_and_long_ranges_count_the_same(
    store: Store, first: int, last: int
) -> None:
    """A short range counts from the time index, a long one from each column's index (SQLite):
    both must give what the events themselves say."""
    alerts = [make_alert(f"s{i:03d}", time_ns=BASE + i * S, rule=f"R{i % 3}",
                         priority=Priority(1 + i % 8), hostname=f"h{i % 4}",
                         tags=[f"t{i % 2}", "all"]) for i in range(100)]
    await accept(store, alerts, [])
    chosen = alerts[first:last]
    stats = await store.stats(EventQuery(since_ns=BASE + first * S, until_ns=BASE + last * S), 10)
    assert stats.total == len(chosen)
    assert stats.by_rule == {r: sum(a.rule == r for a in chosen) for r in {a.rule for a in chosen}}
    assert stats.by_hostname == {h: sum(a.hostname == h for a in chosen)
                                 for h in {a.hostname for a in chosen}}
    assert stats.by_tag == {t: sum(t in a.tags for a in chosen)
                            for t in {t for a in chosen for t in a.tags}}
    assert sum(stats.by_priority.values()) == len(chosen)
    assert sum(n for _, n in stats.buckets) == len(chosen)
