"""The Lua scripts of the Redis store: every change that touches more than one key is one script,
so Redis applies it atomically and no other node ever sees half of it.

Layout under the prefix ``P`` (``{gateway}:`` — the braces are a Cluster hash tag, so every key
lives in one slot and scripts may touch them all):

``P m:<id>``        hash: a message (tenant, envelope, raw bytes, size, head, meta, send_at)
``P md:<id>``       list: its delivery ids
``P d:<n>``         hash: a delivery (status, attempts, next attempt, lease owner…)
``P d:<n>:a``       list: its attempts (msgpack)
``P due``           sorted set: waiting (queued/deferred) transactional delivery ids by next
                    attempt time; ``P dueb`` the same for broadcast ones (delivery field
                    ``lane`` = ``b``), claimed only after ``due`` has none due
``P leases``        sorted set: ``sending`` delivery ids by lease deadline
``P s:<status>``    set: delivery ids in that status (counts, listings)
``P seq``           counter: delivery ids, never reused
``P tm:<tenant>``   sorted set (all scores 0, so by id): a tenant's messages
``P tt:<tenant>``   sorted set: a tenant's messages by creation time (stats)
``P ev:<id>``       list: recorded events of a message (msgpack)
``P idem:<t>:<k>``  hash: idempotency entries by part, and ``<part>:exp``
``P sup:<tenant>``  hash: suppression entries by ``entry_key`` (the address for tenant-wide
                    entries, ``<address> <scope>`` for the others); ``P supx:<tenant>``
                    orders them
``P c:<key>``       hash: a counter (``v``, ``exp``); ``P seen:<key>``: a first sighting

Timestamps travel as the strings Python wrote (``repr(float)``) and are stored unchanged: Lua
would print a number with 14 significant digits and lose the fraction of an epoch second.
"""

from __future__ import annotations

ENQUEUE = """
local P = ARGV[1]
local mid = ARGV[2]
local mkey = P .. 'm:' .. mid
if redis.call('EXISTS', mkey) == 1 then
  return redis.error_reply('DUPLICATE message id ' .. mid)
end
if ARGV[15] ~= '' then
  local ikey, part = ARGV[15], ARGV[16]
  local exp = redis.call('HGET', ikey, part .. ':exp')
  if exp and tonumber(exp) > tonumber(ARGV[7]) then
    return redis.error_reply('IDEMPOTENCY part ' .. part)
  end
  redis.call('HSET', ikey, part, ARGV[17], part .. ':exp', ARGV[18])
  local ttl = tonumber(ARGV[19])
  if ttl > redis.call('PTTL', ikey) then redis.call('PEXPIRE', ikey, ttl) end
end
local tenant = ARGV[3]
redis.call('HSET', mkey, 'ten', tenant, 'src', ARGV[4], 'from', ARGV[5], 'utf8', ARGV[6],
  'at', ARGV[7], 'raw', ARGV[8], 'size', ARGV[9], 'head', ARGV[10], 'meta', ARGV[11],
  'send', ARGV[12], 'stream', ARGV[21])
local lane = ARGV[22]
redis.call('ZADD', P .. 'tm:' .. tenant, 0, mid)
redis.call('ZADD', P .. 'tt:' .. tenant, ARGV[7], mid)
local n = tonumber(ARGV[20])
local ids = {}
for i = 0, n - 1 do
  local id = redis.call('INCR', P .. 'seq')
  redis.call('HSET', P .. 'd:' .. id, 'id', id, 'mid', mid, 'rcpt', ARGV[23 + 2 * i],
    'dom', ARGV[24 + 2 * i], 'ten', tenant, 'st', 'queued', 'att', 0, 'next', ARGV[13],
    'exp', ARGV[14], 'err', '', 'prov', '', 'pmid', '', 'upd', ARGV[7], 'own', '',
    'lane', lane)
  redis.call('RPUSH', P .. 'md:' .. mid, id)
  redis.call('SADD', P .. 's:queued', id)
  redis.call('ZADD', P .. 'due' .. lane, ARGV[13], id)
  ids[#ids + 1] = id
end
return ids
"""

_DUE = """
local function due_key(P, key)
  return P .. 'due' .. (redis.call('HGET', key, 'lane') or '')
end
"""

_RECLAIM = (
    _DUE
    + """
local function reclaim(P, now, reason)
  local count = 0
  local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, 1000)
  for _, id in ipairs(expired) do
    redis.call('ZREM', P .. 'leases', id)
    local key = P .. 'd:' .. id
    if redis.call('HGET', key, 'st') == 'sending' then
      redis.call('HSET', key, 'st', 'deferred', 'next', now, 'upd', now, 'err', reason, 'own', '')
      redis.call('SMOVE', P .. 's:sending', P .. 's:deferred', id)
      redis.call('ZADD', due_key(P, key), now, id)
      count = count + 1
    end
  end
  return count
end
"""
)

CLAIM = (
    _RECLAIM
    + """
local P, now, limit, deadline, owner = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local reclaimed = reclaim(P, now, ARGV[6])
local deliveries, messages, seen = {}, {}, {}
local due = {}
if limit > 0 then
  due = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, limit)
  local more = math.min(limit - #due, tonumber(ARGV[7]))
  if more > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'dueb', '-inf', now, 'LIMIT', 0, more)) do
      due[#due + 1] = id
    end
  end
end
if #due > 0 then
  for _, id in ipairs(due) do
    redis.call('ZREM', P .. 'due', id)
    redis.call('ZREM', P .. 'dueb', id)
    local key = P .. 'd:' .. id
    local st = redis.call('HGET', key, 'st')
    if st == 'queued' or st == 'deferred' then
      redis.call('SMOVE', P .. 's:' .. st, P .. 's:sending', id)
      redis.call('HSET', key, 'st', 'sending', 'upd', now, 'own', owner)
      redis.call('ZADD', P .. 'leases', deadline, id)
      local d = redis.call('HMGET', key, 'id', 'mid', 'rcpt', 'st', 'att', 'next', 'exp',
        'err', 'prov', 'pmid', 'upd', 'lane')
      deliveries[#deliveries + 1] = d
      local mid = d[2]
      if not seen[mid] then
        seen[mid] = true
        messages[#messages + 1] = redis.call('HMGET', P .. 'm:' .. mid, 'ten', 'src', 'from',
          'utf8', 'at', 'raw', 'stream')
        table.insert(messages[#messages], 1, mid)
      end
    end
  end
end
return {reclaimed, deliveries, messages}
"""
)

EXTEND = """
local P, owner, deadline = ARGV[1], ARGV[2], ARGV[3]
local kept = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', P .. 'd:' .. id, 'own') == owner
      and redis.call('ZSCORE', P .. 'leases', id) then
    redis.call('ZADD', P .. 'leases', 'XX', deadline, id)
    kept = kept + 1
  end
end
return kept
"""

RELEASE = (
    _DUE
    + """
local P, owner, now, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local released = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local key = P .. 'd:' .. id
  if redis.call('HGET', key, 'own') == owner and redis.call('HGET', key, 'st') == 'sending' then
    redis.call('ZREM', P .. 'leases', id)
    redis.call('HSET', key, 'st', 'deferred', 'next', now, 'upd', now, 'err', reason, 'own', '')
    redis.call('SMOVE', P .. 's:sending', P .. 's:deferred', id)
    redis.call('ZADD', due_key(P, key), now, id)
    released = released + 1
  end
end
return released
"""
)

COMPLETE = (
    _DUE
    + """
local P, now = ARGV[1], ARGV[2]
local i = 4
local applied = 0
for _ = 1, tonumber(ARGV[3]) do
  local id, st, nxt = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tried, n, holder = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7]), ARGV[i + 8]
  local key = P .. 'd:' .. id
  local old = redis.call('HGET', key, 'st')
  -- An outcome from the node holding the lease applies only while it still holds it: not
  -- after another node took the delivery over, nor twice (a retry after a lost reply).
  if old and (holder == '' or redis.call('HGET', key, 'own') == holder) then
    redis.call('SMOVE', P .. 's:' .. old, P .. 's:' .. st, id)
    redis.call('HSET', key, 'st', st, 'next', nxt, 'err', ARGV[i + 3], 'prov', ARGV[i + 4],
      'pmid', ARGV[i + 5], 'upd', now, 'own', '')
    if tried > 0 then redis.call('HINCRBY', key, 'att', tried) end
    redis.call('ZREM', P .. 'leases', id)
    if st == 'queued' or st == 'deferred' then
      redis.call('ZADD', due_key(P, key), nxt, id)
    else
      redis.call('ZREM', due_key(P, key), id)
    end
    for a = 1, n do redis.call('RPUSH', key .. ':a', ARGV[i + 8 + a]) end
    applied = applied + 1
  end
  i = i + 9 + n
end
return applied
"""
)

RETRY = (
    _DUE
    + """
local P, now, fresh = ARGV[1], ARGV[2], ARGV[3]
local count = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = P .. 'd:' .. id
  local st = redis.call('HGET', key, 'st')
  if st and st ~= 'delivered' and st ~= 'sending' and st ~= 'skipped' then
    redis.call('SMOVE', P .. 's:' .. st, P .. 's:deferred', id)
    redis.call('HSET', key, 'st', 'deferred', 'next', now, 'upd', now)
    if tonumber(redis.call('HGET', key, 'exp')) < tonumber(fresh) then
      redis.call('HSET', key, 'exp', fresh)
    end
    redis.call('ZADD', due_key(P, key), now, id)
    count = count + 1
  end
end
return count
"""
)

_FORGET = """
local function forget_delivery(P, id, st)
  redis.call('DEL', P .. 'd:' .. id, P .. 'd:' .. id .. ':a')
  if st then redis.call('SREM', P .. 's:' .. st, id) end
  redis.call('ZREM', P .. 'due', id)
  redis.call('ZREM', P .. 'dueb', id)
  redis.call('ZREM', P .. 'leases', id)
end

local function forget_message(P, mid, tenant)
  redis.call('DEL', P .. 'm:' .. mid, P .. 'md:' .. mid, P .. 'ev:' .. mid)
  if tenant then
    redis.call('ZREM', P .. 'tm:' .. tenant, mid)
    redis.call('ZREM', P .. 'tt:' .. tenant, mid)
  end
end
"""

DELETE = (
    _FORGET
    + """
local P = ARGV[1]
local count = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local fields = redis.call('HMGET', P .. 'd:' .. id, 'mid', 'st')
  local mid, st = fields[1], fields[2]
  if mid then
    forget_delivery(P, id, st)
    redis.call('LREM', P .. 'md:' .. mid, 0, id)
    if redis.call('LLEN', P .. 'md:' .. mid) == 0 then
      forget_message(P, mid, redis.call('HGET', P .. 'm:' .. mid, 'ten'))
    end
    count = count + 1
  end
end
return count
"""
)

PURGE = (
    _FORGET
    + """
local P, tenant, before = ARGV[1], ARGV[2], ARGV[3]
local offset, batch = tonumber(ARGV[4]), tonumber(ARGV[5])
local final = {delivered = true, bounced = true, expired = true, skipped = true}
local by_time = P .. 'tt:' .. tenant
local mids = redis.call('ZRANGEBYSCORE', by_time, '-inf', '(' .. before, 'LIMIT', offset, batch)
local purged = 0
for _, mid in ipairs(mids) do
  local ids = redis.call('LRANGE', P .. 'md:' .. mid, 0, -1)
  local states, done = {}, true
  for i, id in ipairs(ids) do
    states[i] = redis.call('HGET', P .. 'd:' .. id, 'st')
    if states[i] and not final[states[i]] then done = false break end
  end
  if done then
    for i, id in ipairs(ids) do forget_delivery(P, id, states[i]) end
    forget_message(P, mid, tenant)
    purged = purged + 1
  end
end
return {purged, #mids}
"""
)

PURGE_IDEMPOTENCY = """
local now = tonumber(ARGV[1])
local removed = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, -4) == ':exp' and tonumber(fields[i + 1]) <= now then
    redis.call('HDEL', KEYS[1], name, string.sub(name, 1, -5))
    removed = removed + 1
  end
end
return removed
"""

ADD_SUPPRESSIONS = """
local P = ARGV[1]
for i = 2, #ARGV, 3 do
  redis.call('HSET', P .. 'sup:' .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', P .. 'supx:' .. ARGV[i], 0, ARGV[i + 1])
end
return (#ARGV - 1) / 3
"""

REMOVE_SUPPRESSION = """
local P, tenant, address, field = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fields = {field}
if field == '' then
  -- Every scope: the entry keys are the address alone, or the address, a space and a scope.
  fields = redis.call('ZRANGEBYLEX', P .. 'supx:' .. tenant, '[' .. address, '(' .. address .. '!')
  if #fields == 0 then return 0 end
end
redis.call('ZREM', P .. 'supx:' .. tenant, unpack(fields))
return redis.call('HDEL', P .. 'sup:' .. tenant, unpack(fields))
"""

ADD_TO_COUNTER = """
local key, amount, limit, exp, now = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HMGET', key, 'v', 'exp')
local value = 0
if current[1] and tonumber(current[2]) > tonumber(now) then
  value = tonumber(current[1])
  if tonumber(current[2]) > tonumber(exp) then exp = current[2] end
end
value = value + amount
if limit ~= '' and value > tonumber(limit) then
  return {0, value - amount}
end
redis.call('HSET', key, 'v', value, 'exp', exp)
local ttl = tonumber(ARGV[5])
if ttl > redis.call('PTTL', key) then redis.call('PEXPIRE', key, ttl) end
return {1, value}
"""

FIRST_SIGHTING = """
local seen = redis.call('GET', KEYS[1])
if seen and tonumber(seen) > tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""
