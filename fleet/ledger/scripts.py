"""The ledger's Lua scripts (``fleet.ledger.consumer`` runs them; its docstring says what the
keys hold): APPLY applies a batch of events, each exactly once; SWEEP expires overdue bids."""

APPLY_FIELDS = 13  # values per event in APPLY's arguments, after its three fixed ones

APPLY = r"""
-- A batch of events, one script call (ARGV: expire_s, seen TTL, outbox cap, then FIELDS values
-- per event); each event applies as before, in order, and its code is returned: 0 already
-- counted, 1 applied, 2 applied with a billed impression queued for the shards.
local p = KEYS[1]
local expire_s, seen_ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function apply(id, kind, ts_s, bid, campaign, price, user, publisher, model, bid_ts, deadline, flag, ekey)
local ts = tonumber(ts_s)
flag = ',' .. flag .. ','
local bidkey = p .. 'bid:' .. bid
if not redis.call('SET', p .. 'seen:' .. id, 1, 'NX', 'EX', seen_ttl) then
  return 0  -- already counted (its impression, if any, went to the outbox then)
end
if kind == 'ivt' then
  if redis.call('HEXISTS', bidkey, 'billed') == 0 then
    -- nothing billed (yet): give the claim back, so a later run still reverses it, once
    redis.call('DEL', p .. 'seen:' .. id)
    return 1
  end
  campaign = redis.call('HGET', bidkey, 'campaign') or campaign  -- the bid's own, whatever the report said
elseif kind ~= 'selected' and kind ~= 'response' and campaign == '' then
  campaign = redis.call('HGET', bidkey, 'campaign') or ''
end
local agg = p .. 'agg:' .. campaign .. ':' .. math.floor(ts / 60)
if kind ~= 'response' then
  redis.call('SADD', p .. 'campaigns', campaign)
  redis.call('HINCRBY', agg, 'events', 1)  -- the key exists from here, so its TTL sticks
  redis.call('EXPIRE', agg, 8 * 86400)
end
if string.find(flag, ',test,', 1, true) then
  -- an OpenRTB test request: no reservation, no spend, no open bid
  if kind ~= 'response' then redis.call('HINCRBY', agg, 'test', 1) end
  return 1
end
local function impression(u, c)
  -- the billed impression for the cache shards, in this same atomic step (the forwarder
  -- sends it; its shard write is keyed by ekey, so a resend is harmless)
  if cap <= 0 or not u or u == '' then return 0 end
  local ob = p .. 'freq'
  local n = redis.call('RPUSH', ob, cjson.encode({u, c, ekey, ts_s}))
  if n > cap then
    redis.call('LTRIM', ob, n - cap, -1)
    redis.call('HINCRBY', p .. 'stats', 'freq_dropped', n - cap)
    redis.call('HINCRBY', p .. 'stats', 'freq_head', n - cap)
  end
  return 1
end
local function close(field)
  -- release what the bid reserved, once, whichever closes it first; a notice that overtook its
  -- bid's selected event (another replica's emitter flushed first) closes it all the same
  if redis.call('HSETNX', bidkey, 'closed', field) == 1 then
    redis.call('EXPIRE', bidkey, 8 * 86400)
    local reserved = redis.call('HGET', bidkey, 'reserved')
    if reserved then
      redis.call('HINCRBYFLOAT', agg, 'released', reserved)
      redis.call('ZREM', p .. 'open', bid)
    end
    return true
  end
  return false
end
if kind == 'selected' then
  local reserved = price / 1000.0
  redis.call('HINCRBY', agg, 'selected', 1)
  redis.call('HINCRBYFLOAT', agg, 'reserved', reserved)
  redis.call('HSET', bidkey, 'campaign', campaign, 'reserved', reserved, 'user', user, 'ts', ts,
             'publisher', publisher, 'model', model)
  redis.call('EXPIRE', bidkey, 8 * 86400)
  local closed = redis.call('HGET', bidkey, 'closed')
  if closed then
    redis.call('HINCRBYFLOAT', agg, 'released', reserved)
    if closed == 'billed' then return 1 + impression(user, campaign) end
    return 1
  end
  if deadline > 0 then
    redis.call('ZADD', p .. 'open', deadline, bid)  -- open until its own notice deadline
  else
    redis.call('ZADD', p .. 'open', ts + expire_s, bid)
  end
  return 1
elseif kind == 'response' then
  local rkey = p .. 'responses:' .. math.floor(ts / 86400)
  redis.call('HINCRBY', rkey, math.floor(ts / 60), 1)
  redis.call('EXPIRE', rkey, 8 * 86400)
  return 1
elseif kind == 'win' then
  redis.call('HINCRBY', agg, 'won', 1)
  return 1
elseif kind == 'billed' then
  local spend = price / 1000.0
  redis.call('HINCRBY', agg, 'billed', 1)
  redis.call('HINCRBYFLOAT', agg, 'spend', spend)
  if string.find(flag, ',unpriced,', 1, true) then
    redis.call('HINCRBY', agg, 'unpriced', 1)  -- counted at our bid: an upper bound
  end
  local rec = redis.call('HMGET', bidkey, 'user', 'closed', 'ts')
  if rec[2] == 'lost' then
    -- the exchange says it charged: the spend counts (the conservative side), flagged
    redis.call('HINCRBY', agg, 'billed_after_lost', 1)
  end
  close('billed')
  -- spend counts on the bid's UTC day: a bill for a bid at 23:59:59 arriving after midnight
  -- belongs to the day the flight spent it
  local day
  if bid_ts > 0 then day = math.floor(bid_ts / 86400)
  elseif rec[3] then day = math.floor(tonumber(rec[3]) / 86400)
  else day = math.floor(ts / 86400) end
  redis.call('HSET', bidkey, 'billed', spend, 'bday', day)
  if campaign ~= '' then redis.call('HSETNX', bidkey, 'campaign', campaign) end
  redis.call('HINCRBYFLOAT', p .. 'spend:' .. day, campaign, spend)
  redis.call('EXPIRE', p .. 'spend:' .. day, 8 * 86400)
  redis.call('PUBLISH', 'fleet:ledger:spend', campaign .. ' ' .. spend)
  if not rec[1] then return 1 end  -- queued when its selected event arrives
  return 1 + impression(rec[1], campaign)
elseif kind == 'lost' then
  redis.call('HINCRBY', agg, 'lost', 1)
  close('lost')
  return 1
elseif kind == 'expired' then
  if close('expired') then redis.call('HINCRBY', agg, 'expired', 1) end
  return 1
elseif kind == 'click' then
  redis.call('HINCRBY', agg, 'clicks', 1)
  return 1
elseif kind == 'ivt' then
  -- reversed from the bid's own record: its billed spend, its campaign, the day it counted on
  local rec = redis.call('HMGET', bidkey, 'billed', 'bday')
  local day = rec[2] or tostring(math.floor(ts / 86400))
  redis.call('HINCRBY', agg, 'ivt', 1)
  redis.call('HINCRBYFLOAT', agg, 'spend', -tonumber(rec[1]))
  redis.call('HINCRBYFLOAT', p .. 'spend:' .. day, campaign, -tonumber(rec[1]))
  redis.call('PUBLISH', 'fleet:ledger:spend', campaign .. ' ' .. -tonumber(rec[1]))
  return 1
end
return 1
end
local codes = {}
for i = 4, #ARGV, FIELDS do
  codes[#codes + 1] = apply(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]),
    ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], tonumber(ARGV[i + 9]), tonumber(ARGV[i + 10]), ARGV[i + 11], ARGV[i + 12])
end
return codes
""".replace("FIELDS", str(APPLY_FIELDS))

SWEEP = r"""
-- Expire up to ARGV[2] bids whose deadline is past: release what they reserved, once (the bid's
-- 'closed' field says which close came first). Two commands per bid; the aggregates change once
-- per campaign, so a batch is cheap and Redis is not held long.
local p, now = KEYS[1], tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', p .. 'open', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
redis.call('ZREM', p .. 'open', unpack(due))
local count, released = {}, {}
for _, bid in ipairs(due) do
  local bidkey = p .. 'bid:' .. bid
  if redis.call('HSETNX', bidkey, 'closed', 'expired') == 1 then
    local r = redis.call('HMGET', bidkey, 'campaign', 'reserved')
    local campaign = r[1] or ''
    count[campaign] = (count[campaign] or 0) + 1
    released[campaign] = (released[campaign] or 0) + (tonumber(r[2]) or 0)
  end
end
local minute = math.floor(now / 60)
for campaign, n in pairs(count) do
  local agg = p .. 'agg:' .. campaign .. ':' .. minute
  redis.call('HINCRBY', agg, 'events', n)
  redis.call('HINCRBY', agg, 'expired', n)
  redis.call('HINCRBYFLOAT', agg, 'released', released[campaign])
  redis.call('EXPIRE', agg, 8 * 86400)
  redis.call('SADD', p .. 'campaigns', campaign)
end
return #due
"""
