"""Aggregation windows of the Redis store (see ``sidekick.aggregation``).

Keys, under the store's prefix:

- ``agg:<output>:<key>:<start_ms>``  HASH, one window: o output, h group key, s start and
  e end (ms, Redis clock), c repeats counted, f/l event time (ns) of the first/last of them,
  k the aggregatefields names (comma-separated), a the alert that opened it (JSON)
- ``aggcur:<output>:<key>``           the start_ms of the group's newest window
- ``aggdue``                          ZSET of window keys by end (ms), for the flusher

The accept script opens windows and counts repeats (``ADMIT``), on Redis's clock so replicas
agree where a window ends. Closing is two steps: ``DUE`` reads the ended windows, the replica
builds each summary (a pure function of the record), and ``CLOSE`` queues it only if the window
is still there and unchanged, so each window is summarized by exactly one replica.
"""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis

from sidekick.aggregation import Aggregation, Window
from sidekick.alert import Alert, now_ns

# A Lua function of the accept script. ``route`` is one output's part of the NUL-separated
# outputs argument: a bare name (not aggregating) or name|key|window_ms|time_ns|fields.
# Returns the output to queue the alert to, or nil when its group's open window counted it
# (and the output's name as the second value then).
ADMIT = """
local function admit(p, route, j, now)
  local o, kh, win, ts, fields = string.match(route, '^([^|]+)|(%x+)|(%d+)|(%d+)|(.*)$')
  if not o then return route end
  local cur = p .. 'aggcur:' .. o .. ':' .. kh
  local start = redis.call('GET', cur)
  if start then
    local wk = p .. 'agg:' .. o .. ':' .. kh .. ':' .. start
    local e = redis.call('HGET', wk, 'e')
    if e and now < tonumber(e) then
      if redis.call('HINCRBY', wk, 'c', 1) == 1 then redis.call('HSET', wk, 'f', ts) end
      redis.call('HSET', wk, 'l', ts)
      return nil, o
    end
  end
  local s, e = string.format('%d', now), string.format('%d', now + tonumber(win))
  local wk = p .. 'agg:' .. o .. ':' .. kh .. ':' .. s
  redis.call('SET', cur, s)
  redis.call('HSET', wk, 'o', o, 'h', kh, 's', s, 'e', e, 'c', '0', 'k', fields, 'a', j)
  redis.call('ZADD', p .. 'aggdue', e, wk)
  return o
end
"""

_FIELDS = ("o", "h", "s", "e", "c", "f", "l", "k", "a")

# KEYS: due zset. ARGV: limit. Flat (window key, then _FIELDS' values) per window ended by
# Redis's clock; read-only, so replicas may all run it.
DUE = f"""
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local out = {{}}
for _, wk in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])) do
  out[#out + 1] = wk
  for _, v in ipairs(redis.call('HMGET', wk, '{"', '".join(_FIELDS)}')) do
    out[#out + 1] = v
  end
end
return out
"""

# KEYS: window hash, due zset, the group's current-window pointer, the output's stream.
# ARGV: start_ms, count as DUE read it, summary JSON ('' for none), accepted_ns. 1 if this
# call closed the window. A count that moved since DUE (only if Redis's clock stepped back)
# leaves the window for the next round.
CLOSE = """
if redis.call('HGET', KEYS[1], 'c') ~= ARGV[2] then return 0 end
if redis.call('ZREM', KEYS[2], KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[4], '*', 'a', ARGV[3], 't', ARGV[4], 'n', '0')
end
return 1
"""


def route(output: str, aggregation: Aggregation | None, alert: Alert) -> str:
    """One output's part of the accept script's outputs argument (see ``ADMIT``)."""
    key = aggregation.key(alert) if aggregation else None
    if aggregation is None or key is None:
        return output
    window_ms = max(1, aggregation.window_ns // 1_000_000)
    return f"{output}|{key}|{window_ms}|{alert.time_ns}|{','.join(aggregation.fields)}"


class RedisWindows:
    def __init__(self, r: aioredis.Redis, prefix: str) -> None:
        self.p = prefix
        self._r = r
        self._due = r.register_script(DUE)
        self._close = r.register_script(CLOSE)

    async def flush(self, limit: int) -> tuple[int, dict[str, int]]:
        due_key = f"{self.p}aggdue"
        flat = await self._due(keys=[due_key], args=[limit])
        queued: Counter[str] = Counter()
        closed = 0
        step = 1 + len(_FIELDS)
        for i in range(0, len(flat), step):
            wk, o, h, s, e, c, f, last, k, a = flat[i : i + step]
            if c is None:  # the record is gone (evicted under maxmemory): nothing to summarize
                await self._r.zrem(due_key, wk)
                continue
            window = Window(o, h, int(s) * 10**6, int(e) * 10**6, int(c), int(f or 0),
                            int(last or 0), Alert.from_json(a), tuple(filter(None, k.split(","))))
            summary = window.summary().to_json() if window.count else b""
            keys = [wk, due_key, f"{self.p}aggcur:{o}:{h}", f"{self.p}q:{o}"]
            if await self._close(keys=keys, args=[s, c, summary, now_ns()]):
                closed += 1
                if summary:
                    queued[o] += 1
        return closed, dict(queued)
