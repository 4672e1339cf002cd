"""Redis store: several hub replicas share events, delivery queues and dead letters.

Key layout (prefix ``lanner:`` by default):

- ``dedup:<uuid>``     string with a TTL of the dedup window
- ``ev:<uuid>``        the alert JSON plus ``_m``, its index member
- ``ix:all``           every event; ZSET, score 0, member ``<22-digit time_ns+1e20>:<uuid>``,
                       so lexicographic order is exactly (time_ns, uuid) and ZRANGEBYLEX pages
- ``ix:r:<rule>`` ``ix:s:<source>`` ``ix:h:<hostname>`` ``ix:p:<Priority>`` ``ix:t:<tag>``
                       the same members, per filter value
- ``q:<output>``       stream of deliveries (fields a=alert JSON, t=accepted_ns, n=attempts,
                       e=last error); consumer group ``lanner``; an entry is XDELed when settled
- ``retry:<output>``   ZSET of deliveries waiting for a retry, scored by due_ns
- ``lease:<output>``   ZSET of leased entry ids by lease expiry (ms, Redis clock)
- ``age:<output>``     ZSET, score 0, member ``<20-digit accepted_ns>:<uuid>`` per retried
                       delivery not yet settled (it is out of accept order in the stream);
                       with the stream head it gives the oldest pending accepted_ns
- ``dead:<output>``    ZSET dead-letter id by dead_ns; ``deadrec:<output>`` HASH id -> record
- ``deadseq``          dead-letter id counter; ``deadouts`` SET of outputs with dead letters
- ``ixkeys``           SET of the index keys, for stats over a time range without a scan
- ``agg:*``, ``aggcur:*``, ``aggdue``  aggregation windows (``redis_aggregate``)
- ``tri``, ``trilog:*``, ``ix:g:*``, ``dlog:*``  triage and delivery records (``redis_records``)
- ``localrules``       HASH ``v`` (version), ``text``: the local rules file (UI exceptions)
- ``live``             pub/sub channel: accepted alerts, for the other replicas' live feeds
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from sidekick.aggregation import OPENER_FIELD, Aggregation
from sidekick.alert import Alert, AlertError, now_ns
from sidekick.store import redis_records as records
from sidekick.store import redis_scripts as lua
from sidekick.store.base import (
    DeadLetter,
    Delivery,
    Ingested,
    LocalRulesDoc,
    QueueStats,
    Store,
)
from sidekick.store.redis_aggregate import RedisWindows, route
from sidekick.store.redis_reads import RedisReads, _member, _tkey
from sidekick.store.redis_records import RedisRecords

log = logging.getLogger("lanner.store")
GROUP = "lanner"
_POLL_S = 0.15  # longest blocking wait, so due retries and expired leases are noticed
_RETENTION_CHUNK = 500


def _age_member(accepted_ns: int, uuid: str) -> str:
    return f"{accepted_ns:020d}:{uuid}"


class RedisStore(RedisReads, Store):
    def __init__(self, url: str, consumer: str, prefix: str = "lanner:") -> None:
        self.url = url
        self.consumer = consumer
        self.p = prefix
        self._r: aioredis.Redis | None = None
        self._groups: set[str] = set()

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._r is not None:
            return
        # RESP2 pinned: replies (XRANGE's, the scripts') are parsed in its shapes.
        self._r = aioredis.Redis.from_url(self.url, decode_responses=True, protocol=2)
        await self._r.ping()
        reg = self._r.register_script
        self._accept, self._retention = reg(lua.ACCEPT), reg(lua.RETENTION)
        self._move_due, self._take = reg(lua.MOVE_DUE), reg(lua.TAKE)
        self._prune_ixkeys = reg(lua.PRUNE_IXKEYS)
        self._save_rules = reg(lua.SAVE_LOCAL_RULES)
        self._complete = reg(lua.COMPLETE)
        self._retry, self._bury, self._redrive = reg(lua.RETRY), reg(lua.BURY), reg(lua.REDRIVE)
        self._windows = RedisWindows(self._r, self.p)
        self._records = RedisRecords(self._r, self.p)

    async def close(self) -> None:
        if self._r is not None:
            await self._r.aclose()
            self._r = None

    async def ping(self) -> None:
        await self.r.ping()

    @property
    def r(self) -> aioredis.Redis:
        if self._r is None:
            raise RuntimeError("RedisStore is not open")
        return self._r

    def _ix(self, kind: str, value: str) -> str:
        # NUL separates index keys in accept's arguments; an index may then hold a few more
        # events than its name says, which is harmless: results are filtered exactly.
        return f"{self.p}ix:{kind}:{value.replace(chr(0), chr(0xFFFD))}"

    def _qkeys(self, output: str) -> tuple[str, str, str, str]:
        """Stream, retry zset, age zset, lease zset."""
        p = self.p
        return f"{p}q:{output}", f"{p}retry:{output}", f"{p}age:{output}", f"{p}lease:{output}"

    # --- live feed across replicas ---------------------------------------------------------

    async def share_live(self, alerts: list[Alert]) -> None:
        if alerts:
            message = b'{"from":%b,"alerts":[%b]}' % (
                orjson.dumps(self.consumer), b",".join(a.to_json() for a in alerts))
            await self.r.publish(f"{self.p}live", message)

    def live_from_others(self) -> AsyncIterator[list[Alert]]:
        return self._live_from_others()

    async def _live_from_others(self) -> AsyncIterator[list[Alert]]:
        # Pub/sub, not a stream: a subscriber that is away misses alerts, which the store
        # still has; nothing accumulates in Redis for feeds nobody reads.
        while True:
            try:
                async with self.r.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(f"{self.p}live")
                    async for message in pubsub.listen():
                        alerts = self._shared_alerts(message["data"])
                        if alerts:
                            yield alerts
            except (ConnectionError, OSError, RedisError) as exc:
                log.warning("live feed from other replicas interrupted (%s); resubscribing",
                            exc)
                await asyncio.sleep(1.0)

    def _shared_alerts(self, data: str) -> list[Alert]:
        """Another replica's alerts from a live message; none from our own, or a bad one."""
        try:
            shared = orjson.loads(data)
            if shared["from"] == self.consumer:
                return []
            return [Alert.from_dict(a) for a in shared["alerts"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, AlertError) as exc:
            log.warning("ignored a malformed live feed message: %s", exc)
            return []

    # --- ingest -----------------------------------------------------------------------------

    async def ingest(
        self,
        batch: list[tuple[Alert, list[str]]],
        dedup_window_s: float,
        aggregations: Mapping[str, Aggregation],
    ) -> Ingested:
        if not batch:
            return Ingested([], {})
        args: list[Any] = [self.p, max(1, int(dedup_window_s * 1000)), now_ns()]
        for alert, outputs in batch:
            if not alert.uuid:
                raise ValueError("alert has no uuid")
            d = alert.to_dict()
            d["_m"] = m = _member(alert.time_ns, alert.uuid)
            ixs = [
                f"r:{alert.rule}",
                f"s:{alert.source}",
                f"h:{alert.hostname}",
                f"p:{d['priority']}",
                *(f"t:{tag}" for tag in alert.tags),
            ]
            ixs_arg = "\0".join(ixs)
            if "\0" in ixs_arg:
                ixs_arg = "\0".join(x.replace("\0", "\ufffd") for x in ixs)
            routes = [route(o, aggregations.get(o), alert) for o in dict.fromkeys(outputs)]
            args += (m, orjson.dumps(d), ixs_arg, "\0".join(routes))
        fresh, tally = await self._accept(args=args)
        counted = dict(zip(tally[::2], map(int, tally[1::2]), strict=True))
        return Ingested([bool(x) for x in fresh], counted)

    async def flush_windows(self, limit: int) -> tuple[int, dict[str, int]]:
        return await self._windows.flush(limit)

    # --- delivery queue ---------------------------------------------------------------------

    async def _ensure_group(self, output: str, force: bool = False) -> None:
        if output in self._groups and not force:
            return
        try:
            # From id 0: deliveries accepted before any replica leased must not be skipped.
            await self.r.xgroup_create(self._qkeys(output)[0], GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(output)

    async def lease(self, output: str, limit: int, lease_s: float, wait_s: float) -> list[Delivery]:
        if limit <= 0:
            return []
        await self._ensure_group(output)
        try:
            return await self._lease(output, limit, lease_s, wait_s)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._ensure_group(output, force=True)  # the stream was deleted under us
            return await self._lease(output, limit, lease_s, wait_s)

    async def _lease(
        self, output: str, limit: int, lease_s: float, wait_s: float
    ) -> list[Delivery]:
        q, retry, _, leases = self._qkeys(output)
        deadline = time.monotonic() + max(0.0, wait_s)
        args = [GROUP, self.consumer, limit, max(1, int(lease_s * 1000))]
        while True:
            await self._move_due(keys=[retry, q], args=[now_ns(), max(limit, 100)])
            flat = await self._take(keys=[q, leases], args=args)
            if flat[0]:
                return [
                    Delivery(i, output, Alert.from_json(a), int(n), int(t))
                    for i, a, t, n in zip(*[iter(flat)] * 4, strict=True)
                ]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Wake on a newer entry without consuming it; the cap bounds how late a due retry
            # or an expired lease (neither of which adds an entry) is noticed.
            block = max(1, int(min(remaining, _POLL_S) * 1000))
            await self.r.xread({q: flat[1]}, count=1, block=block)

    async def complete(self, deliveries: list[Delivery]) -> None:
        by_output: dict[str, list[Any]] = {}
        now = now_ns()
        for d in deliveries:
            by_output.setdefault(d.output, []).extend(
                (d.id, _age_member(d.accepted_ns, d.alert.uuid),
                 *records.record_args(d, now, "delivered", d.attempts + 1))
            )
        for output, args in by_output.items():
            q, _, age, leases = self._qkeys(output)
            await self._complete(keys=[q, age, leases], args=[GROUP, self.p, *args])

    async def retry(self, delivery: Delivery, due_ns: int, error: str) -> None:
        q, retry, age, leases = self._qkeys(delivery.output)
        # The old entry id makes the member unique even if the same alert is retried twice.
        member = orjson.dumps(
            [
                delivery.alert.to_json().decode(),
                str(delivery.accepted_ns),
                str(delivery.attempts + 1),
                error,
                delivery.id,
            ]
        )
        k = _age_member(delivery.accepted_ns, delivery.alert.uuid)
        log = records.record_args(delivery, now_ns(), "retrying", delivery.attempts + 1, due_ns,
                                  error)
        await self._retry(
            keys=[q, retry, age, leases],
            args=[GROUP, delivery.id, due_ns, member, k, self.p, *log],
        )

    async def bury(self, delivery: Delivery, reason: str) -> None:
        q, _, age, leases = self._qkeys(delivery.output)
        k = _age_member(delivery.accepted_ns, delivery.alert.uuid)
        dead = now_ns()
        record = {
            "a": delivery.alert.to_json().decode(),
            "n": str(delivery.attempts + 1),  # counting the attempt that just failed
            "t": str(delivery.accepted_ns),
            "d": str(dead),
            "r": reason,
        }
        keys = [q, age, leases, *self._dead_keys(delivery.output)]
        keys += [f"{self.p}deadseq", f"{self.p}deadouts"]
        log = records.record_args(delivery, dead, "dead", delivery.attempts + 1, reason=reason)
        args = [GROUP, delivery.id, k, dead, orjson.dumps(record), delivery.output, self.p, *log]
        await self._bury(keys=keys, args=args)

    def _dead_keys(self, output: str) -> tuple[str, str]:
        return f"{self.p}dead:{output}", f"{self.p}deadrec:{output}"

    async def _dead_outputs(self, output: str | None) -> list[str]:
        if output is not None:
            return [output]
        return sorted(await self.r.smembers(f"{self.p}deadouts"))

    async def dead_letters(self, output: str | None, limit: int) -> list[DeadLetter]:
        if limit <= 0:
            return []
        letters: list[DeadLetter] = []
        for out in await self._dead_outputs(output):
            zkey, hkey = self._dead_keys(out)
            ids = await self.r.zrevrange(zkey, 0, limit - 1)
            recs = await self.r.hmget(hkey, ids) if ids else []
            for id_, raw in zip(ids, recs, strict=True):
                if raw is None:
                    continue
                d = orjson.loads(raw)
                alert, times = Alert.from_json(d["a"]), (int(d["n"]), int(d["t"]), int(d["d"]))
                letters.append(DeadLetter(id_, out, alert, *times, d["r"]))
        letters.sort(key=lambda x: (x.dead_ns, int(x.id)), reverse=True)
        return letters[:limit]

    async def redrive(self, output: str | None, ids: list[str] | None) -> int:
        if ids is not None and not ids:
            return 0
        total = 0
        for out in await self._dead_outputs(output):
            q = self._qkeys(out)[0]
            args = [now_ns(), self.p, out, OPENER_FIELD, *(["*"] if ids is None else ids)]
            total += await self._redrive(keys=[q, *self._dead_keys(out)], args=args)
        return total

    async def queue_stats(self, outputs: list[str]) -> dict[str, QueueStats]:
        async with self.r.pipeline(transaction=True) as pipe:
            for output in outputs:
                q, retry, age, _ = self._qkeys(output)
                pipe.xlen(q).zcard(retry).xrange(q, count=1).zrange(age, 0, 0)
                pipe.zcard(self._dead_keys(output)[0])
            replies = await pipe.execute()
        result: dict[str, QueueStats] = {}
        for i, output in enumerate(outputs):
            length, retrying, head, readded, dead = replies[5 * i : 5 * i + 5]
            # Fresh entries sit in the stream in accept order, so its head is the oldest of
            # them; deliveries put back out of order are all in the age zset.
            ages = [int(head[0][1]["t"])] if head else []
            ages += [int(readded[0].split(":", 1)[0])] if readded else []
            result[output] = QueueStats(length + retrying, min(ages, default=None), dead)
        return result

    # --- the local rules file -----------------------------------------------------------------

    async def local_rules(self) -> LocalRulesDoc:
        version, text = await self.r.hmget(f"{self.p}localrules", ["v", "text"])
        return LocalRulesDoc(int(version or 0), text or "")

    async def save_local_rules(self, expected_version: int, text: str) -> bool:
        saved = await self._save_rules(keys=[f"{self.p}localrules"],
                                       args=[str(int(expected_version)), text])
        return bool(saved)

    # --- recent events ----------------------------------------------------------------------

    async def get_event(self, uuid: str) -> Alert | None:
        raw = await self.r.get(f"{self.p}ev:{uuid}")
        return Alert.from_json(raw) if raw is not None else None

    async def enforce_retention(self, max_age_s: float, max_count: int) -> int:
        all_key = f"{self.p}ix:all"
        removed = 0
        cutoff = "(" + _tkey(now_ns() - int(max_age_s * 1e9))
        while members := await self.r.zrangebylex(all_key, "-", cutoff, 0, _RETENTION_CHUNK):
            removed += await self._retention(args=[self.p, *members])
        # Everything up to the oldest event kept: replicas trimming at once agree on it.
        while edge := await self.r.zrevrange(all_key, max(0, max_count), max(0, max_count)):
            members = await self.r.zrangebylex(all_key, "-", "[" + edge[0], 0, _RETENTION_CHUNK)
            removed += await self._retention(args=[self.p, *members])
        if removed:
            await self._prune_ixkeys(args=[self.p])
        return removed
