"""Lua scripts of the Redis store. Each runs atomically, so replicas never interleave halfway.

Numbers that can exceed 2^53 (ns timestamps) travel as strings and are never turned into Lua
numbers. Scripts that derive keys from data (accept, retention) build them from the prefix in
ARGV: fine for one Redis (or a primary with replicas), not for Redis Cluster.
"""

from __future__ import annotations

import orjson

from sidekick.store.base import AGGREGATED
from sidekick.store.redis_aggregate import ADMIT
from sidekick.store.redis_records import LUA_FORGET, LUA_RECORD

# Index keys of an event JSON; must match RedisStore._ix() (NUL is the separator of the
# index list accept gets, so it is replaced in key names on both sides).
_UNINDEX = """
local function ix(p, kind, value)
  return p .. 'ix:' .. kind .. ':' .. string.gsub(value, '%z', '\\239\\191\\189')
end
local function unindex(p, d)
  local m = d._m
  redis.call('ZREM', ix(p, 'r', d.rule), m)
  redis.call('ZREM', ix(p, 's', d.source), m)
  redis.call('ZREM', ix(p, 'h', d.hostname), m)
  redis.call('ZREM', ix(p, 'p', d.priority), m)
  for _, tag in ipairs(d.tags) do
    redis.call('ZREM', ix(p, 't', tag), m)
  end
end
local function decode(raw)
  local ok, d = pcall(cjson.decode, raw)
  if ok and type(d) == 'table' and type(d._m) == 'string' then return d end
  return nil
end
"""

# ARGV: prefix, dedup window ms, accepted_ns, then per alert: index member (its tail after 23
# characters is the uuid), event JSON, NUL-joined index key suffixes, NUL-joined outputs (each
# a name, or an aggregating output's route: see redis_aggregate.ADMIT).
# Few arguments per alert (packing them costs the client more than splitting costs here), and
# one ZADD per index key per batch rather than per alert. Returns {1 (new) or 0 per alert,
# flat (output, alerts its windows counted instead of queueing)}.
ACCEPT = (
    _UNINDEX
    + ADMIT
    + LUA_FORGET
    + f"local AGGREGATED = {orjson.dumps(AGGREGATED).decode()}\n"  # a JSON string reads in Lua
    + """
local p, win, t = ARGV[1], ARGV[2], ARGV[3]
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local res, adds, order, counted, counters = {}, {}, {}, {}, {}
local function add(key, m)
  local l = adds[key]
  if not l then
    l = {}
    adds[key] = l
    order[#order + 1] = key
  end
  l[#l + 1] = '0'
  l[#l + 1] = m
end
for i = 4, #ARGV, 4 do
  local m, j = ARGV[i], ARGV[i + 1]
  local uuid = string.sub(m, 24)
  if redis.call('SET', p .. 'dedup:' .. uuid, '1', 'NX', 'PX', win) then
    -- The uuid may come back after its dedup window: drop the old copy's index entries.
    local old = redis.call('SET', p .. 'ev:' .. uuid, j, 'GET')
    if old then
      local d = decode(old)
      if d then
        redis.call('ZREM', p .. 'ix:all', d._m)
        unindex(p, d)
        moved(p, uuid, d._m, m)
      end
    end
    add(p .. 'ix:all', m)
    for suffix in string.gmatch(ARGV[i + 2], '[^%z]+') do
      add(p .. 'ix:' .. suffix, m)
    end
    for r in string.gmatch(ARGV[i + 3], '[^%z]+') do
      local out, aggregated = admit(p, r, j, now)
      if out then
        redis.call('XADD', p .. 'q:' .. out, '*', 'a', j, 't', t, 'n', '0')
      else
        redis.call('RPUSH', p .. 'dlog:' .. uuid, cjson.encode({o = aggregated, s = 'aggregated',
          t = t, n = 0, r = AGGREGATED, m = 0}))
        if not counters[aggregated] then
          counters[aggregated] = 0
          counted[#counted + 1] = aggregated
        end
        counters[aggregated] = counters[aggregated] + 1
      end
    end
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
for _, key in ipairs(order) do
  local l = adds[key]
  for s = 1, #l, 4000 do  -- unpack() is bounded by the Lua C stack
    redis.call('ZADD', key, unpack(l, s, math.min(s + 3999, #l)))
  end
end
-- Registry of index keys, so stats over a time range can count per key without a scan.
for s = 1, #order, 4000 do
  redis.call('SADD', p .. 'ixkeys', unpack(order, s, math.min(s + 3999, #order)))
end
local tally = {}
for _, out in ipairs(counted) do
  tally[#tally + 1] = out
  tally[#tally + 1] = counters[out]
end
return {res, tally}
"""
)

# ARGV: prefix, index member... Returns how many events this call removed (replicas running
# retention concurrently each count only what they removed).
RETENTION = (
    _UNINDEX
    + LUA_FORGET
    + """
local p = ARGV[1]
local removed = 0
for i = 2, #ARGV do
  local m = ARGV[i]
  removed = removed + redis.call('ZREM', p .. 'ix:all', m)
  local evk = p .. 'ev:' .. string.sub(m, 24)
  local raw = redis.call('GET', evk)
  if raw then
    local d = decode(raw)
    -- A different _m means the uuid was accepted again since: that copy stays.
    if d and d._m == m then
      unindex(p, d)
      forget(p, d.uuid, m)
      redis.call('DEL', evk)
    end
  end
end
return removed
"""
)

# ARGV: prefix. Drops registry entries of index keys that retention emptied (Redis deletes
# empty zsets); atomic, so a key an accept just re-created is never dropped.
PRUNE_IXKEYS = """
local n = 0
for _, key in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'ixkeys')) do
  if redis.call('EXISTS', key) == 0 then n = n + redis.call('SREM', ARGV[1] .. 'ixkeys', key) end
end
return n
"""

# KEYS: retry zset, stream. ARGV: now_ns, max. Retry members are JSON [alert, accepted_ns,
# attempts, error, old id]. Atomic, so a due retry is moved by exactly one replica.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local d = cjson.decode(m)
  redis.call('XADD', KEYS[2], '*', 'a', d[1], 't', d[2], 'n', d[3], 'e', d[4])
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""

# Leases: ``lease`` ZSET of entry id -> expiry (ms, Redis clock, so replicas agree). Taking
# deliveries and recording their expiry happen in one script: a replica dying in between
# cannot leave an entry in the group's pending list that nobody would ever reclaim.

# KEYS: stream, lease zset. ARGV: group, consumer, limit, lease_ms.
# Returns flat (id, alert, accepted_ns, attempts) per delivery, expired leases first; or, when
# there is nothing, {'', last delivered id} for the caller to block on newer entries.
TAKE = """
local q, lz, g, me = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local limit, lease_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local out, n = {}, 0
local function take(id, f)
  local v = {}
  for i = 1, #f, 2 do v[f[i]] = f[i + 1] end
  out[#out + 1] = id
  out[#out + 1] = v.a
  out[#out + 1] = v.t
  out[#out + 1] = v.n
  redis.call('ZADD', lz, now + lease_ms, id)
  n = n + 1
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', lz, '-inf', now, 'LIMIT', 0, limit)) do
  local claimed = redis.call('XCLAIM', q, g, me, 0, id)
  if claimed[1] and claimed[1][2] then
    take(id, claimed[1][2])
  else  -- settled meanwhile, or deleted: nothing to deliver
    redis.call('ZREM', lz, id)
    redis.call('XACK', q, g, id)
  end
end
if n < limit then
  local r = redis.call('XREADGROUP', 'GROUP', g, me, 'COUNT', limit - n, 'STREAMS', q, '>')
  if r then
    for _, e in ipairs(r[1][2]) do take(e[1], e[2]) end
  end
end
if n > 0 then return out end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', q)) do
  local v = {}
  for i = 1, #info, 2 do v[info[i]] = info[i + 1] end
  if v.name == g then return {'', v['last-delivered-id']} end
end
return {'', '0-0'}
"""

# The age zset holds only retried deliveries: back in the stream, they are out of accept
# order, which otherwise makes the stream head the oldest pending.

# KEYS: stream, age zset, lease zset. ARGV: group, prefix, then (entry id, age member, log
# uuid, delivery record) per delivery. XACK answering 0 means another lease holder already
# settled the entry: leave the age zset and the record to it then.
COMPLETE = LUA_RECORD + """
local n = 0
for i = 3, #ARGV, 4 do
  redis.call('ZREM', KEYS[3], ARGV[i])
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
    record(ARGV[2], ARGV[i + 2], ARGV[i + 3])
    n = n + 1
  end
end
return n
"""

# KEYS: stream, retry zset, age zset, lease zset. ARGV: group, id, due_ns, member, age member,
# prefix, log uuid, delivery record.
RETRY = LUA_RECORD + """
redis.call('ZREM', KEYS[4], ARGV[2])
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
record(ARGV[6], ARGV[7], ARGV[8])
return 1
"""

# KEYS: stream, age zset, lease zset, dead zset (id by dead_ns), dead hash (id -> record), id
# counter, set of outputs with dead letters. ARGV: group, entry id, age member, dead_ns,
# record, output, prefix, log uuid, delivery record (its closing brace is where the dead-letter
# id goes).
BURY = LUA_RECORD + """
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
local id = tostring(redis.call('INCR', KEYS[6]))
redis.call('HSET', KEYS[5], id, ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], id)
redis.call('SADD', KEYS[7], ARGV[6])
record(ARGV[7], ARGV[8], string.sub(ARGV[9], 1, -2) .. ',"d":"' .. id .. '"}')
return id
"""

# KEYS: stream, dead zset, dead hash. ARGV: now_ns, prefix, output, opener field name, then
# '*' for all or ids. As in the SQLite
# store, a redriven delivery starts afresh (attempts 0, accepted now) so it is not buried again
# at once for its age; being accepted now also keeps the stream head the oldest fresh entry.
REDRIVE = LUA_RECORD + """
local ids = {}
if ARGV[5] == '*' then
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
else
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local n = 0
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[3], id)
  if rec then
    local d = cjson.decode(rec)
    redis.call('XADD', KEYS[1], '*', 'a', d.a, 't', ARGV[1], 'n', '0', 'e', d.r)
    -- Only the uuid is read from the alert: its big numbers may lose precision in Lua.
    local ok, a = pcall(cjson.decode, d.a)
    if ok and type(a) == 'table' then
      local opener = type(a.output_fields) == 'table' and a.output_fields[ARGV[4]]
      local summary = type(opener) == 'string' and opener ~= ''
      local uuid = summary and opener or a.uuid
      if type(uuid) == 'string' then
        record(ARGV[2], uuid, cjson.encode({o = ARGV[3], s = 'redriven', t = ARGV[1], n = 0,
          r = '', m = summary and 1 or 0}))
      end
    end
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZREM', KEYS[2], id)
    n = n + 1
  end
end
return n
"""

# KEYS: local rules hash (v: version, text). ARGV: expected version (decimal), text.
# Compare-and-set: 1 if saved as the next version, 0 if another save came first.
SAVE_LOCAL_RULES = """
if (redis.call('HGET', KEYS[1], 'v') or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'v', 1)
return 1
"""
