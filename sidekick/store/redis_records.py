"""Triage and delivery records of the Redis store.

Keys, under the store's prefix:

- ``tri``            HASH uuid -> current triage, JSON {s status, n note, a actor, t at_ns}
- ``trilog:<uuid>``  LIST of every triage the event was given (same JSON), oldest first
- ``ix:g:<status>``  ZSET of the events with that triage, members as ``ix:all``'s, so a triage
                     filter walks it like the other indexes
- ``dlog:<uuid>``    LIST of delivery steps, JSON {o output, s state, t at_ns, n attempts,
                     x next_ns, r reason, d dead-letter id, m 1 for a summary's step}

Times travel as strings (Lua numbers are doubles). Every record is written by the script that
makes the change it records, and only while the event is stored; the retention script removes
them with the event (``LUA_FORGET``, used by ``redis_scripts``).
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from sidekick.store.base import Delivery, DeliveryRecord, Triage, log_uuid

_CHUNK = 500  # events per triage script call

# Lua helpers of the accept and retention scripts. ``forget``: the event is removed.
# ``moved``: a uuid accepted again got a new index member.
LUA_FORGET = """
local function triage_status(p, uuid)
  local raw = redis.call('HGET', p .. 'tri', uuid)
  if not raw then return nil end
  local ok, t = pcall(cjson.decode, raw)
  if ok and type(t) == 'table' and type(t.s) == 'string' then return t.s end
  return nil
end
local function forget(p, uuid, m)
  local s = triage_status(p, uuid)
  if s then
    redis.call('ZREM', p .. 'ix:g:' .. s, m)
    redis.call('HDEL', p .. 'tri', uuid)
  end
  redis.call('DEL', p .. 'trilog:' .. uuid, p .. 'dlog:' .. uuid)
end
local function moved(p, uuid, old_m, new_m)
  local s = triage_status(p, uuid)
  if s and old_m ~= new_m then
    redis.call('ZREM', p .. 'ix:g:' .. s, old_m)
    redis.call('ZADD', p .. 'ix:g:' .. s, 0, new_m)
  end
end
"""

# ARGV: prefix, record JSON, status, uuid... Returns how many of the uuids are stored events.
SET_TRIAGE = """
local p, rec, s = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV do
  local uuid = ARGV[i]
  local raw = redis.call('GET', p .. 'ev:' .. uuid)
  local ok, d = pcall(cjson.decode, raw or '')
  if raw and ok and type(d) == 'table' and type(d._m) == 'string' then
    local old = redis.call('HGET', p .. 'tri', uuid)
    if old then
      local ok2, t = pcall(cjson.decode, old)
      if ok2 and type(t) == 'table' and type(t.s) == 'string' then
        redis.call('ZREM', p .. 'ix:g:' .. t.s, d._m)
      end
    end
    redis.call('HSET', p .. 'tri', uuid, rec)
    redis.call('ZADD', p .. 'ix:g:' .. s, 0, d._m)
    redis.call('RPUSH', p .. 'trilog:' .. uuid, rec)
    n = n + 1
  end
end
return n
"""

# Appends a delivery step to an event's log if the event is still stored.
LUA_RECORD = """
local function record(p, uuid, rec)
  if redis.call('EXISTS', p .. 'ev:' .. uuid) == 1 then
    redis.call('RPUSH', p .. 'dlog:' .. uuid, rec)
  end
end
"""


def record_args(
    delivery: Delivery, at_ns: int, state: str, attempts: int,
    next_ns: int | None = None, reason: str = "",
) -> tuple[str, bytes]:
    """(uuid of the log, record JSON) for a script that records a delivery step."""
    uuid = log_uuid(delivery.alert)
    rec: dict[str, Any] = {"o": delivery.output, "s": state, "t": str(at_ns), "n": attempts,
                           "r": reason, "m": int(uuid != delivery.alert.uuid)}
    if next_ns is not None:
        rec["x"] = str(next_ns)
    return uuid, orjson.dumps(rec)


def _triage(raw: str | bytes) -> Triage:
    t = orjson.loads(raw)
    return Triage(t["s"], t["n"], t["a"], int(t["t"]))


class RedisRecords:
    def __init__(self, r: aioredis.Redis, prefix: str) -> None:
        self.p = prefix
        self._r = r
        self._set = r.register_script(SET_TRIAGE)

    async def set_triage(self, uuids: list[str], triage: Triage) -> int:
        rec = orjson.dumps({"s": triage.status, "n": triage.note, "a": triage.actor,
                            "t": str(triage.at_ns)})
        unique = list(dict.fromkeys(uuids))
        done = 0
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            done += await self._set(args=[self.p, rec, triage.status, *chunk])
        return done

    async def statuses(self, uuids: list[str]) -> list[str]:
        """Each event's triage status, "new" when it has none."""
        if not uuids:
            return []
        raws = await self._r.hmget(f"{self.p}tri", uuids)
        return [orjson.loads(raw)["s"] if raw else "new" for raw in raws]

    async def triage_of(self, uuids: list[str]) -> dict[str, Triage]:
        if not uuids:
            return {}
        raws = await self._r.hmget(f"{self.p}tri", uuids)
        return {u: _triage(raw) for u, raw in zip(uuids, raws, strict=True) if raw}

    async def triage_history(self, uuid: str) -> list[Triage]:
        return [_triage(raw) for raw in await self._r.lrange(f"{self.p}trilog:{uuid}", 0, -1)]

    async def delivery_log(self, uuid: str) -> list[DeliveryRecord]:
        found = []
        for raw in await self._r.lrange(f"{self.p}dlog:{uuid}", 0, -1):
            d = orjson.loads(raw)
            found.append(DeliveryRecord(
                d["o"], d["s"], int(d["t"]), int(d.get("n") or 0),
                int(d["x"]) if d.get("x") else None, d.get("r") or "", str(d.get("d") or ""),
                bool(d.get("m"))))
        return found
