"""Billed impressions to the cache shards, on their own retried path.

The ledger's APPLY script appends each billed impression (user, campaign, event key, ts) to the
region's outbox ``fleet:<region>:ledger:freq`` in the same atomic step as the bill, and the
consumer acknowledges its entries without waiting for any shard. ``FreqForwarder`` reads the
outbox oldest first in batches, hands them to ``on_billed`` (the shards' ``record_now``) and
removes what was accepted; a failure leaves the batch where it is and backs off. Delivery is at
least once: a shard's frequency write is keyed by the event key, so a resend is harmless.

The outbox is capped (``consumer.OUTBOX_CAP``; the script drops the oldest beyond it, counted in
``stats`` ``freq_dropped``). ``stats`` ``freq_head`` counts every entry ever removed from the
outbox's head, by the cap or by the forwarder, so the forwarder removes exactly the entries it
delivered even when the cap dropped some of them meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fleet.cache.store import FreqEvent
from fleet.ledger.consumer import ledger_prefix

log = logging.getLogger("fleet.ledger")

TAKE = r"""
local head = redis.call('HGET', KEYS[2], 'freq_head') or '0'
return {head, redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}
"""

DONE = r"""
-- ARGV[1] entries were taken when the head count was ARGV[2]: remove those still there
local head = tonumber(redis.call('HGET', KEYS[2], 'freq_head') or '0')
local k = tonumber(ARGV[1]) + tonumber(ARGV[2]) - head
if k <= 0 then return 0 end
redis.call('LTRIM', KEYS[1], k, -1)
redis.call('HINCRBY', KEYS[2], 'freq_head', k)
redis.call('HINCRBY', KEYS[2], 'freq_forwarded', k)
return k
"""


def _freq_event(raw: bytes) -> FreqEvent:
    user, campaign, ekey, ts = json.loads(raw)
    return FreqEvent(user, campaign, ekey, float(ts))


class FreqForwarder:
    def __init__(self, redis, region: str, on_billed, *, batch: int = 2000, idle_s: float = 0.2,
                 backoff_s: tuple[float, float] = (0.2, 10.0)):
        self.redis = redis  # an asyncio client (bytes replies)
        p = ledger_prefix(region)
        self.keys = [p + "freq", p + "stats"]
        self.on_billed = on_billed  # async callable(list[FreqEvent]); raises if not taken
        self.batch = batch
        self.idle_s = idle_s
        self.backoff_s = backoff_s
        self._take = redis.register_script(TAKE)
        self._done = redis.register_script(DONE)
        self.forwarded = 0
        self.failures = 0
        self.last_error = ""

    async def step(self) -> int:
        """Send one batch from the outbox; returns how many were taken. Raises (and leaves the
        batch in the outbox) when ``on_billed`` does."""
        head, raws = await self._take(keys=self.keys, args=[self.batch])
        if not raws:
            return 0
        await self.on_billed([_freq_event(r) for r in raws])
        await self._done(keys=self.keys, args=[len(raws), int(head)])
        self.forwarded += len(raws)
        return len(raws)

    async def drain(self) -> int:
        """Forward until the outbox is empty (tests, tools); raises as ``step`` does."""
        total = 0
        while n := await self.step():
            total += n
        return total

    async def backlog(self) -> int:
        """Impressions waiting in the outbox (-1: unknown, Redis away)."""
        try:
            return int(await self.redis.llen(self.keys[0]))
        except Exception:
            return -1

    async def run(self, stop: asyncio.Event | None = None) -> None:
        delay = self.backoff_s[0]
        while stop is None or not stop.is_set():
            try:
                n = await self.step()
                delay = self.backoff_s[0]
                if n < self.batch:
                    await asyncio.sleep(self.idle_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a shard refusing, or Redis away: the batch stays; retry
                self.failures += 1
                self.last_error = repr(exc)[:200]
                log.warning("ledger frequency forwarder: %s (retry in %.1fs)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_s[1])

    def summary(self) -> dict:
        return {"forwarded": self.forwarded, "failures": self.failures, "last_error": self.last_error}
