"""The ledger consumer: region event streams into spend, exactly once.

It reads a region's stream as a member of the ``ledger`` consumer group and applies each event
with one Lua script, atomically: the event id is claimed (``SET NX``) and the aggregates change
in the same step, or neither happens. Entries are acknowledged after they are applied. So a
consumer killed anywhere re-reads its unacknowledged entries when it comes back (pending list
first) and they apply as no-ops when already counted: nothing is lost, nothing counts twice, and
duplicate or replayed notices, which carry the same event id, count once.

State, per region prefix ``fleet:<region>:ledger:``:
- ``agg:<campaign>:<minute>``: selected, won, billed, lost, expired, clicks, ivt counts and
  reserved, released, spend (fleet currency) for that campaign in that minute;
- ``bid:<bid>``: what a selected bid reserved and for whom, and what closed it (billed, lost,
  expired); a notice may overtake its bid's selected event (it went through another replica),
  and the selected event then finds the bid closed and releases at once;
- ``open``: sorted set of open bids by expiry; the sweep emits ``expired`` for them, which
  releases the reservation;
- ``spend:<day>``: finalized spend per campaign for the UTC day (what pacing consumes), also
  announced on the ``fleet:ledger:spend`` channel.

Frequency counters advance on billed impressions: the consumer returns (user, campaign, event)
for each billed bid and its runner sends them to the region's cache shards.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleet.cache.shard import redis_client
from fleet.cache.store import FreqEvent
from fleet.ledger.emitter import stream_key
import msgspec

from fleet.ledger.events import Event, decode

log = logging.getLogger("fleet.ledger")
GROUP = "ledger"
_unpack = msgspec.msgpack.Decoder(list[bytes]).decode
SEEN_TTL_S = 14 * 86_400

APPLY = r"""
local p = KEYS[1]
local id, kind, ts, bid, campaign = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local price, user, expire_s, publisher, model = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
local bidkey = p .. 'bid:' .. bid
if not redis.call('SET', p .. 'seen:' .. id, 1, 'NX', 'EX', tonumber(ARGV[11])) then
  -- already counted; a billed impression is handed out again (its frequency write is keyed
  -- by event id, so a resend is harmless, and it may never have reached a shard)
  if (kind == 'billed' or kind == 'selected') and redis.call('HGET', bidkey, 'closed') == 'billed' then
    local u = redis.call('HGET', bidkey, 'user')
    if u then return {3, u, redis.call('HGET', bidkey, 'campaign') or ''} end
  end
  return {0}
end
if kind ~= 'selected' and kind ~= 'response' and campaign == '' then
  campaign = redis.call('HGET', bidkey, 'campaign') or ''
end
local agg = p .. 'agg:' .. campaign .. ':' .. math.floor(ts / 60)
redis.call('SADD', p .. 'campaigns', campaign)
if kind ~= 'response' then
  redis.call('HINCRBY', agg, 'events', 1)  -- the key exists from here, so its TTL sticks
  redis.call('EXPIRE', agg, 8 * 86400)
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
    if closed == 'billed' then return {2, user, campaign} end
    return {1}
  end
  redis.call('ZADD', p .. 'open', ts + expire_s, bid)
  return {1}
elseif kind == 'response' then
  local rkey = p .. 'responses:' .. math.floor(ts / 86400)
  redis.call('HINCRBY', rkey, math.floor(ts / 60), 1)
  redis.call('EXPIRE', rkey, 8 * 86400)
  return {1}
elseif kind == 'win' then
  redis.call('HINCRBY', agg, 'won', 1)
  return {1}
elseif kind == 'billed' then
  local spend = price / 1000.0
  redis.call('HINCRBY', agg, 'billed', 1)
  redis.call('HINCRBYFLOAT', agg, 'spend', spend)
  local known = redis.call('HEXISTS', bidkey, 'user') == 1
  close('billed')
  redis.call('HSET', bidkey, 'billed', spend)
  local day = math.floor(ts / 86400)
  redis.call('HINCRBYFLOAT', p .. 'spend:' .. day, campaign, spend)
  redis.call('EXPIRE', p .. 'spend:' .. day, 8 * 86400)
  redis.call('PUBLISH', 'fleet:ledger:spend', campaign .. ' ' .. spend)
  if not known then return {1} end  -- counted when its selected event arrives
  return {2, redis.call('HGET', bidkey, 'user') or '', campaign}
elseif kind == 'lost' then
  redis.call('HINCRBY', agg, 'lost', 1)
  close('lost')
  return {1}
elseif kind == 'expired' then
  if close('expired') then redis.call('HINCRBY', agg, 'expired', 1) end
  return {1}
elseif kind == 'click' then
  redis.call('HINCRBY', agg, 'clicks', 1)
  return {1}
elseif kind == 'ivt' then
  local billed = redis.call('HGET', bidkey, 'billed')
  if billed then
    redis.call('HINCRBY', agg, 'ivt', 1)
    redis.call('HINCRBYFLOAT', agg, 'spend', -tonumber(billed))
    redis.call('HINCRBYFLOAT', p .. 'spend:' .. math.floor(ts / 86400), campaign, -tonumber(billed))
  end
  return {1}
end
return {1}
"""


def ledger_prefix(region: str) -> str:
    return f"fleet:{region}:ledger:"


class LedgerConsumer:
    def __init__(self, region: str, redis_url: str, *, consumer: str = "c0", expire_s: float = 300.0,
                 batch: int = 8, clock=time.time, on_billed=None):
        self.region = region
        self.redis = redis_client(redis_url, decode=False, timeout_s=5.0)  # reads block up to 0.5 s
        self.stream = stream_key(region)
        self.prefix = ledger_prefix(region)
        self.consumer = consumer
        self.expire_s = expire_s
        self.batch = batch  # stream entries per read (each up to 256 events)
        self.clock = clock
        self.on_billed = on_billed  # async callable(list[FreqEvent]) or None
        self._script = self.redis.register_script(APPLY)
        self._backlog = True  # start with our own pending entries
        self.applied = 0
        # events already claimed: replayed notices, and the redelivery of entries whose
        # earlier attempt failed after Redis ran its scripts (a reply lost to a timeout)
        self.duplicates = 0
        self.failed_steps = 0  # attempts that raised; their entries are read again

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _apply(self, entries: list[tuple[str, dict]]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        evs: list[Event] = []
        for ev in (decode(raw) for _eid, fields in entries for raw in _unpack(fields[b"b"])):
            evs.append(ev)
            await self._script(keys=[self.prefix], args=[
                ev.id, ev.kind, ev.ts, ev.bid, ev.campaign, ev.price, ev.user, self.expire_s,
                ev.publisher, ev.model, SEEN_TTL_S], client=pipe)
        results = await pipe.execute()
        billed = []
        for ev, res in zip(evs, results):
            if res[0] in (0, 3):
                self.duplicates += 1
            else:
                self.applied += 1
            if res[0] in (2, 3) and res[1]:
                user = res[1].decode() if isinstance(res[1], bytes) else res[1]
                campaign = res[2].decode() if isinstance(res[2], bytes) else str(res[2])
                billed.append(FreqEvent(user, campaign, f"{ev.auction}:{ev.imp}" if ev.auction else ev.bid, ev.ts))
        if billed and self.on_billed is not None:
            # Awaits the shards' answer; if it raises, nothing is acked, the entries are read
            # again, and the script hands the billed impressions out again (code 3).
            await self.on_billed(billed)
        await self.redis.xack(self.stream, GROUP, *[eid for eid, _ in entries])
        return len(evs)

    async def step(self, block_ms: int = 200) -> int:
        """Read and apply one batch (pending entries first after a start); returns how many."""
        start = "0" if self._backlog else ">"
        res = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=self.batch,
                                          block=None if self._backlog else block_ms)
        entries = res[0][1] if res else []
        if self._backlog and not entries:
            self._backlog = False
            return 0
        return await self._apply(entries) if entries else 0  # events applied (entries hold many)

    async def trim(self) -> None:
        """Drop stream entries every consumer of the group is done with (below the oldest
        pending entry, or below the last delivered one when nothing is pending)."""
        groups = await self.redis.xinfo_groups(self.stream)
        g = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        if g is None:
            return
        floor = g["last-delivered-id"]
        if int(g.get("pending") or 0):
            summary = await self.redis.xpending(self.stream, GROUP)
            floor = summary["min"]
        await self.redis.xtrim(self.stream, minid=floor, approximate=True)

    async def drain(self, block_ms: int = 100) -> int:
        """Apply everything in the stream now (pending entries first); returns how many."""
        total = 0
        while True:
            backlog = self._backlog
            n = await self.step(block_ms)
            total += n
            if n == 0 and not backlog:
                return total

    async def sweep(self) -> int:
        """Emit ``expired`` for bids past their notice window (straight into the ledger)."""
        now = self.clock()
        due = await self.redis.zrangebyscore(self.prefix + "open", "-inf", now, start=0, num=500)
        if not due:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for bid in (b.decode() for b in due):
            await self._script(keys=[self.prefix], args=[f"expired:{bid}", "expired", now, bid, "", 0, "",
                                                   self.expire_s, "", "", SEEN_TTL_S], client=pipe)
        await pipe.execute()
        return len(due)

    async def lag(self) -> int:
        """Entries not yet delivered to the group plus those delivered and not acknowledged.
        "Delivered" is judged by ids, not by Redis's own lag figure, which it may not know or
        may report as 0 while entries wait; then behind counts at least 1."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
            info = await self.redis.xinfo_stream(self.stream)
        except Exception:
            return -1  # unknown (Redis away): never "caught up"
        for g in groups:
            if g["name"] in (GROUP, GROUP.encode()):
                pending = int(g.get("pending") or 0)
                if g.get("last-delivered-id") == info.get("last-generated-id"):
                    return pending  # everything delivered
                return max(int(g.get("lag") or 0), 1) + pending
        return 0

    async def run(self, stop: asyncio.Event | None = None, sweep_s: float = 1.0) -> None:
        last_sweep = 0.0
        grouped = False
        while stop is None or not stop.is_set():
            try:
                if not grouped:
                    await self.ensure_group()
                    grouped = True
                await self.step()
                if self.clock() - last_sweep >= sweep_s:
                    await self.sweep()
                    await self.trim()
                    last_sweep = self.clock()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: wait and go on; unacked entries stay pending
                self.failed_steps += 1
                log.warning("ledger consumer %s: %s", self.region, exc)
                self._backlog = True
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.redis.aclose()
