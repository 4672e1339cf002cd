"""The Redis store's queries for the UI and API: pages of events over the index zsets, counts,
triage and delivery records. A mixin of ``RedisStore``."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from sidekick.alert import Alert, Priority
from sidekick.store.base import (
    DeliveryRecord,
    EventPage,
    EventQuery,
    Stats,
    Triage,
    decode_cursor,
    encode_cursor,
    event_matches,
)
from sidekick.store.redis_records import RedisRecords

_MAX_BUCKETS = 1000
_T_OFFSET = 10**20  # keeps pre-1970 times (down to year 0) positive in index members
_T_MAX = 10**22 - 1 - _T_OFFSET


def _tkey(time_ns: int) -> str:
    return f"{max(-_T_OFFSET, min(time_ns, _T_MAX)) + _T_OFFSET:022d}"


def _member(time_ns: int, uuid: str) -> str:
    return f"{_tkey(time_ns)}:{uuid}"


def _member_time(member: str) -> int:
    return int(member[:22]) - _T_OFFSET


class RedisReads:
    # Provided by RedisStore.
    p: str
    r: aioredis.Redis
    _records: RedisRecords
    _ix: Callable[[str, str], str]

    def _bounds(self, query: EventQuery, use_cursor: bool) -> tuple[str, str]:
        """ZRANGEBYLEX (max, min) for the query's time range and cursor, newest-first."""
        his: list[str] = []
        if query.until_ns is not None:
            his.append(_tkey(query.until_ns))  # every member at until_ns sorts above this
        if use_cursor and query.cursor:
            his.append(_member(*decode_cursor(query.cursor)))
        hi = "(" + min(his) if his else "+"
        lo = "[" + _tkey(query.since_ns) if query.since_ns is not None else "-"
        return hi, lo

    def _priorities(self, query: EventQuery) -> set[str] | None:
        if query.min_priority is None:
            return None
        return {p.label for p in Priority if p >= query.min_priority}

    async def _plan(self, query: EventQuery, hi: str, lo: str) -> list[str]:
        """The index keys to walk: the filter whose union holds the fewest members in range."""
        groups = [[f"{self.p}ix:all"]]
        prios = self._priorities(query)
        for kind, values in (
            ("r", query.rules),
            ("s", query.sources),
            ("h", query.hostnames),
            ("t", query.tags),
            ("p", sorted(prios) if prios is not None else []),
            ("g", [] if "new" in query.triage else query.triage),
        ):
            if values:
                groups.append([self._ix(kind, v) for v in dict.fromkeys(values)])
        if len(groups) == 1:
            return groups[0]
        async with self.r.pipeline(transaction=False) as pipe:
            for keys in groups:
                for key in keys:
                    pipe.zlexcount(key, lo, hi)
            counts = iter(await pipe.execute())
        sizes = [sum(next(counts) for _ in keys) for keys in groups]
        return groups[sizes.index(min(sizes))]

    async def _walk(
        self, keys: list[str], hi: str, lo: str, chunk: int
    ) -> AsyncIterator[list[str]]:
        """Members of the union of ``keys`` in [lo, hi], newest first, in chunks."""
        while True:
            async with self.r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrevrangebylex(key, hi, lo, 0, chunk)
                replies: list[list[str]] = await pipe.execute()
            # Beyond the highest last member of a full reply, some key may hold more members
            # not fetched yet; above it, every key's members are all here.
            full = [r[-1] for r in replies if len(r) == chunk]
            merged = sorted(set().union(*replies), reverse=True)
            if not full:
                if merged:
                    yield merged
                return
            edge = max(full)
            yield [m for m in merged if m >= edge]
            hi = "(" + edge

    async def _scan(
        self, query: EventQuery, chunk: int, use_cursor: bool
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Matching (member, event dict) pairs, newest first."""
        hi, lo = self._bounds(query, use_cursor)
        if hi != "+" and lo != "-" and hi[1:] <= lo[1:]:
            return
        keys = await self._plan(query, hi, lo)
        prios, needle = self._priorities(query), query.text.lower()
        async for members in self._walk(keys, hi, lo, chunk):
            uuids = [m[23:] for m in members]
            raws = await self.r.mget([f"{self.p}ev:{u}" for u in uuids])
            statuses = (await self._records.statuses(uuids) if query.triage
                        else ["new"] * len(uuids))
            for m, raw, status in zip(members, raws, statuses, strict=True):
                if raw is None:
                    continue  # removed by retention meanwhile
                d = orjson.loads(raw)
                # A stale member (the uuid was accepted again after its dedup window) is skipped.
                if d.get("_m") == m and event_matches(d, query, prios, needle, status):
                    yield m, d

    async def events(self, query: EventQuery) -> EventPage:
        if query.limit < 1:
            raise ValueError("limit must be at least 1")
        # One extra match tells whether an older page exists.
        want = query.limit + 1
        lists = (query.rules, query.sources, query.hostnames, query.tags)
        # One filter at most: the index walked is exactly the matches, no need to over-fetch.
        selective = not query.text and sum(map(bool, lists)) + (query.min_priority is not None) < 2
        chunk = want if selective else min(max(4 * want, 500), 2000)
        found: list[tuple[str, dict[str, Any]]] = []
        async for item in self._scan(query, chunk, use_cursor=True):
            found.append(item)
            if len(found) == want:
                break
        events = [Alert.from_dict(d) for _, d in found[: query.limit]]
        cursor = None
        if len(found) > query.limit:
            m = found[query.limit - 1][0]
            cursor = encode_cursor(_member_time(m), m[23:])
        return EventPage(events, cursor)

    async def stats(self, query: EventQuery, bucket_s: int) -> Stats:
        if bucket_s <= 0:
            raise ValueError("bucket must be at least 1s")
        width = int(bucket_s * 1_000_000_000)
        if query.since_ns is not None and query.until_ns is not None:
            self._bucket_range(query.since_ns, query.until_ns, width)  # fail before scanning
        if query.has_filters():
            total, counts, times = await self._count_by_scan(query, width)
        else:
            total, counts, times = await self._count_by_index(query, width)
        start = query.since_ns if query.since_ns is not None else min(times, default=None)
        end = query.until_ns if query.until_ns is not None else max(times, default=None)
        if query.until_ns is None and end is not None:
            end += width  # the newest bucket start; its bucket is included
        buckets = []
        if start is not None and end is not None:
            buckets = [(b, times.get(b, 0)) for b in self._bucket_range(start, end, width)]
        by_priority = {p.label: counts["p"][p.label] for p in Priority if counts["p"][p.label]}
        by = [dict(counts[k]) for k in "rsht"]
        return Stats(total, by_priority, *by, buckets=buckets)

    async def _count_by_scan(
        self, query: EventQuery, width: int
    ) -> tuple[int, dict[str, Counter[str]], Counter[int]]:
        counts: dict[str, Counter[str]] = {k: Counter() for k in "prsht"}
        times: Counter[int] = Counter()
        async for m, d in self._scan(query, 1000, use_cursor=False):
            for k, field in (("p", "priority"), ("r", "rule"), ("s", "source"), ("h", "hostname")):
                counts[k][d[field]] += 1
            counts["t"].update(set(d["tags"]))
            times[_member_time(m) // width * width] += 1
        return times.total(), counts, times

    async def _count_by_index(
        self, query: EventQuery, width: int
    ) -> tuple[int, dict[str, Counter[str]], Counter[int]]:
        """A time range only: count every index key over it, and ix:all per bucket."""
        hi, lo = self._bounds(query, use_cursor=False)
        all_key, keys = f"{self.p}ix:all", sorted(await self.r.smembers(f"{self.p}ixkeys"))
        keys = [k for k in keys if k != all_key]
        if any("\ufffd" in k for k in keys):  # a key name that lost a NUL: not exact
            return await self._count_by_scan(query, width)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zlexcount(all_key, lo, hi)
            pipe.zrangebylex(all_key, lo, hi, 0, 1).zrevrangebylex(all_key, hi, lo, 0, 1)
            for key in keys:
                pipe.zlexcount(key, lo, hi)
            total, oldest, newest, *per_key = await pipe.execute()
        counts: dict[str, Counter[str]] = {k: Counter() for k in "prsht"}
        skip = len(self.p) + 3  # "ix:"
        for key, n in zip(keys, per_key, strict=True):
            if n and key[skip + 1] == ":":
                counts[key[skip]][key[skip + 2 :]] += n
        times: Counter[int] = Counter()
        if not total:
            return 0, counts, times
        first = _member_time(oldest[0]) // width * width
        last = _member_time(newest[0]) // width * width
        starts = range(first, last + 1, width)
        self._bucket_range(first, last + 1, width)
        async with self.r.pipeline(transaction=False) as pipe:
            for b in starts:
                b_lo, b_hi = "[" + _tkey(b), "(" + _tkey(b + width)
                b_lo = lo if lo != "-" and lo[1:] > b_lo[1:] else b_lo
                b_hi = hi if hi != "+" and hi[1:] < b_hi[1:] else b_hi
                pipe.zlexcount(all_key, b_lo, b_hi)
            times.update(dict(zip(starts, await pipe.execute(), strict=True)))
        return total, counts, times

    @staticmethod
    def _bucket_range(start: int, end: int, width: int) -> range:
        """Bucket starts covering [start, end)."""
        first = start // width * width
        buckets = range(first, end, width) if end > start else range(0)
        if len(buckets) > _MAX_BUCKETS:
            raise ValueError(
                f"too many buckets ({len(buckets)} > {_MAX_BUCKETS}): widen the bucket"
            )
        return buckets

    # --- triage and delivery records --------------------------------------------------------

    async def set_triage(self, uuids: list[str], triage: Triage) -> int:
        return await self._records.set_triage(uuids, triage)

    async def triage_of(self, uuids: list[str]) -> dict[str, Triage]:
        return await self._records.triage_of(uuids)

    async def triage_history(self, uuid: str) -> list[Triage]:
        return await self._records.triage_history(uuid)

    async def delivery_log(self, uuid: str) -> list[DeliveryRecord]:
        return await self._records.delivery_log(uuid)
