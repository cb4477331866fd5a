"""The Lua scripts of ``fleet.ledger.partner_notices`` (its docstring says what the keys hold):
NOTE queues partners' notices with the ledger, CLAIM takes due ones for a sender (and settles
``unknown`` those whose claim outlived its lease), SETTLE records a call's outcome under its claim."""

NOTE = r"""
-- ARGV: now, state TTL, early TTL, then (kind, bid, info) per event, selected events first.
local p = KEYS[1]
local now, ttl, early_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local queued = 0
local function enqueue(bid, kind, info)
  if not redis.call('SET', p .. 'pn:' .. bid .. ':' .. kind, 'queued|0|', 'NX', 'EX', ttl) then return end
  local m = bid .. '|' .. kind
  redis.call('HSET', p .. 'pnj', m, info)
  redis.call('ZADD', p .. 'pnq', now, m)
  queued = queued + 1
end
for i = 4, #ARGV, 3 do
  local kind, bid, info = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pkey = p .. 'pbid:' .. bid
  if kind == 'selected' then
    redis.call('HSET', pkey, 'd', info)
    redis.call('EXPIRE', pkey, ttl)
    for _, k in ipairs({'win', 'billed', 'lost'}) do
      local e = redis.call('HGET', pkey, 'early:' .. k)
      if e then enqueue(bid, k, e) end
    end
  elseif redis.call('HEXISTS', pkey, 'd') == 1 then
    enqueue(bid, kind, info)
  elseif redis.call('HEXISTS', p .. 'bid:' .. bid, 'reserved') == 0 then
    -- no selected event yet (it went through another replica): keep the notice for it
    if redis.call('HSETNX', pkey, 'early:' .. kind, info) == 1 and redis.call('TTL', pkey) < 0 then
      redis.call('EXPIRE', pkey, early_ttl)
    end
  end
end
if queued > 0 then redis.call('HINCRBY', p .. 'stats', 'pn_queued', queued) end
return queued
"""

CLAIM = r"""
-- ARGV: now, how many, token prefix, lease s, state TTL. Claims due jobs; settles 'unknown' the
-- ones whose claim outlived its lease (never called again: at most once).
local p = KEYS[1]
local now, n, owner, lease, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', p .. 'pnq', '-inf', now, 'LIMIT', 0, n)
local out = {}
for i, m in ipairs(due) do
  local sep = string.find(m, '|', 1, true)
  local bid, kind = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
  local skey = p .. 'pn:' .. bid .. ':' .. kind
  local st = redis.call('GET', skey) or 'gone|0|'
  local a, b = string.find(st, '|', 1, true)
  local state = string.sub(st, 1, a - 1)
  local c = string.find(st, '|', a + 1, true)
  local attempt = tonumber(string.sub(st, a + 1, c - 1))
  local job = redis.call('HGET', p .. 'pnj', m) or ''
  local data = redis.call('HGET', p .. 'pbid:' .. bid, 'd') or ''
  if state == 'queued' or state == 'retry' then
    local claim = 'sending|' .. (attempt + 1) .. '|' .. owner .. ':' .. i
    redis.call('SET', skey, claim, 'EX', ttl)
    redis.call('ZADD', p .. 'pnq', now + lease, m)
    out[#out + 1] = {m, claim, job, data}
  elseif state == 'sending' then
    redis.call('SET', skey, 'unknown|' .. attempt .. '|', 'EX', ttl)
    redis.call('ZREM', p .. 'pnq', m)
    redis.call('HDEL', p .. 'pnj', m)
    redis.call('RPUSH', p .. 'pndead', cjson.encode({m, 'unknown', 'claimed, no outcome: ' .. st, job, data}))
    redis.call('HINCRBY', p .. 'stats', 'pn_unknown', 1)
  else
    redis.call('ZREM', p .. 'pnq', m)
    redis.call('HDEL', p .. 'pnj', m)
  end
end
return out
"""

SETTLE = r"""
-- ARGV: member, the claim, outcome (done|retry|dead|unknown|skipped), due (retry), why, TTL, url
local p, m, claim, outcome = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local sep = string.find(m, '|', 1, true)
local skey = p .. 'pn:' .. string.sub(m, 1, sep - 1) .. ':' .. string.sub(m, sep + 1)
if redis.call('GET', skey) ~= claim then
  redis.call('HINCRBY', p .. 'stats', 'pn_outcome_after_lease', 1)
  return 0  -- the lease ran out meanwhile: another sender settled it (unknown)
end
local attempt = string.match(claim, '^sending|(%d+)|')
if outcome == 'retry' then
  redis.call('SET', skey, 'retry|' .. attempt .. '|', 'EX', tonumber(ARGV[6]))
  redis.call('ZADD', p .. 'pnq', tonumber(ARGV[4]), m)
  redis.call('HINCRBY', p .. 'stats', 'pn_retries', 1)
  return 1
end
redis.call('SET', skey, outcome .. '|' .. attempt .. '|', 'EX', tonumber(ARGV[6]))
redis.call('ZREM', p .. 'pnq', m)
if outcome == 'dead' or outcome == 'unknown' then
  redis.call('RPUSH', p .. 'pndead', cjson.encode({m, outcome, ARGV[5], redis.call('HGET', p .. 'pnj', m) or '', ARGV[7]}))
end
redis.call('HDEL', p .. 'pnj', m)
redis.call('HINCRBY', p .. 'stats', 'pn_' .. outcome, 1)
return 1
"""
