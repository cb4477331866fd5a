"""The ledger consumer: region event streams into spend, exactly once.

It reads a region's stream as a member of the ``ledger`` consumer group and applies each event
with one Lua script, atomically: the event id is claimed (``SET NX``) and the aggregates change
in the same step, or neither happens. Entries are acknowledged after they are applied. So a
consumer killed anywhere re-reads its unacknowledged entries when it comes back (pending list
first) and they apply as no-ops when already counted: nothing is lost, nothing counts twice, and
duplicate or replayed notices, which carry the same event id, count once.

State, per region prefix ``fleet:<region>:ledger:``:
- ``agg:<campaign>:<minute>``: selected, won, billed, lost, expired, clicks, ivt counts,
  billed_after_lost, unpriced and test counts, and reserved, released, spend (fleet currency)
  for that campaign in that minute;
- ``bid:<bid>``: what a selected bid reserved and for whom, and what closed it (billed, lost,
  expired), what it billed and on which day (``bday``); a notice may overtake its bid's selected
  event (it went through another replica), and the selected event then finds the bid closed and
  releases at once;
- ``open``: sorted set of open bids by their notice deadline (``until``, else ts + expire_s);
  the sweep expires them, which releases the reservation;
- ``spend:<day>``: finalized spend per campaign for the UTC day *of the bid* (what pacing
  consumes), also announced on the ``fleet:ledger:spend`` channel;
- ``freq``: the outbox of billed impressions for the region's cache shards (frequency counters
  advance on impressions), appended in the same atomic step as the bill and drained by
  ``fleet.ledger.freq.FreqForwarder``: the ledger never waits on a shard;
- ``stats``: outbox bookkeeping (``freq_head``, ``freq_dropped``, ``freq_forwarded``);
- ``caught_up``: unix time (the consumer's clock) at which a read started that found the stream
  drained: every event in the stream then has been applied (control reads it).

An event flagged ``test`` (an OpenRTB ``test: 1`` request) creates no money: it is counted in
``test`` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleet.cache.shard import redis_client
from fleet.ledger.emitter import stream_key
import msgspec

from fleet.ledger.events import decode
from fleet.ledger.partner_notices import PartnerOutbox
from fleet.ledger.scripts import APPLY, APPLY_FIELDS, SWEEP

log = logging.getLogger("fleet.ledger")
GROUP = "ledger"
_unpack = msgspec.msgpack.Decoder(list[bytes]).decode
SEEN_TTL_S = 14 * 86_400
OUTBOX_CAP = 100_000  # billed impressions waiting for the shards; beyond, the oldest are dropped
SWEEP_BATCH = 500  # due bids per sweep script call (Redis runs one script at a time: ~3 ms)
APPLY_BATCH = 256  # events per APPLY call (Redis runs one script at a time: ~1 ms)
SWEEP_BUDGET_S = 0.5  # per sweep: batches until none are due or this is spent


def ledger_prefix(region: str) -> str:
    return f"fleet:{region}:ledger:"


def outbox_key(region: str) -> str:
    return ledger_prefix(region) + "freq"


class LedgerConsumer:
    def __init__(self, region: str, redis_url: str, *, consumer: str = "c0", expire_s: float = 300.0,
                 batch: int = 8, clock=time.time, outbox_cap: int = OUTBOX_CAP):
        self.region = region
        self.redis = redis_client(redis_url, decode=False, timeout_s=5.0)  # reads block up to 0.5 s
        self.stream = stream_key(region)
        self.prefix = ledger_prefix(region)
        self.consumer = consumer
        self.expire_s = expire_s
        self.batch = batch  # stream entries per read (each up to 256 events)
        self.clock = clock
        # billed impressions kept for the shards (0: none, for a region without cache shards)
        self.outbox_cap = outbox_cap
        self._script = self.redis.register_script(APPLY)
        self._sweep = self.redis.register_script(SWEEP)
        self._backlog = True  # start with our own pending entries
        self.applied = 0
        # events already claimed: replayed notices, and the redelivery of entries whose
        # earlier attempt failed after Redis ran its scripts (a reply lost to a timeout)
        self.duplicates = 0
        self.queued = 0  # billed impressions appended to the outbox
        self.failed_steps = 0  # attempts that raised; their entries are read again
        self.dead = 0  # events that could not be decoded (dead-lettered, acknowledged)
        self._dead_letters: list = []
        self.caught_up = 0.0  # the last caught-up mark written
        # partners' own notices, queued in the same pipeline as the events that make them due
        # (fleet.ledger.partner_notices; fired by its PartnerNoticeSender)
        self.partner_outbox = PartnerOutbox(self.redis, self.prefix, clock)
        self.partner_queued = 0

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _apply(self, entries: list[tuple[str, dict]]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        n = calls = 0
        head = [self.expire_s, SEEN_TTL_S, self.outbox_cap]
        args: list = []
        # One script call per APPLY_BATCH events, not one per event: the per-call cost (the
        # client's command encoding, Redis's EVALSHA dispatch) was most of the consumer's CPU.
        evs = list(self._decoded(entries))
        first = await self.partner_outbox.stage(evs, pipe, selected=True)  # before APPLY (see there)
        for ev in evs:
            n += 1
            ekey = f"{ev.auction}:{ev.imp}" if ev.auction else ev.bid  # the frequency write's key
            args += (ev.id, ev.kind, ev.ts, ev.bid, ev.campaign, ev.price, ev.user, ev.publisher, ev.model,
                     ev.bid_ts, ev.until, ev.flag, ekey)
            if len(args) >= APPLY_BATCH * APPLY_FIELDS:
                await self._script(keys=[self.prefix], args=head + args, client=pipe)
                args, calls = [], calls + 1
        if args:
            await self._script(keys=[self.prefix], args=head + args, client=pipe)
            calls += 1
        last = await self.partner_outbox.stage(evs, pipe, selected=False)
        dead, self._dead_letters = self._dead_letters, []
        for eid, raw in dead:
            pipe.rpush(self.prefix + "dead", (eid if isinstance(eid, bytes) else str(eid).encode()) + b" " + raw)
            pipe.hincrby(self.prefix + "stats", "dead", 1)
        results = await pipe.execute() if calls or dead else []
        self.partner_queued += sum(int(x) for x in results[:first] + results[first + calls:first + calls + last])
        for codes in results[first:first + calls]:
            for code in codes:
                if code == 0:
                    self.duplicates += 1
                else:
                    self.applied += 1
                    self.queued += code == 2
        # Acknowledged once applied, and never waiting on anything outside Redis: the billed
        # impressions are in the outbox already, for the forwarder to take to the shards.
        await self.redis.xack(self.stream, GROUP, *[eid for eid, _ in entries])
        return n

    def _decoded(self, entries):
        """Every event of the entries; one that cannot be decoded (a corrupt or foreign entry)
        goes to the dead-letter list ``dead`` with its stream id, counted, so it never holds the
        region's ledger (an entry re-read forever would stop spend, caught_up and the outbox)."""
        for eid, fields in entries:
            try:
                raws = _unpack(fields[b"b"])
            except Exception:
                self._dead(eid, repr(fields)[:4096].encode())
                continue
            for raw in raws:
                try:
                    yield decode(raw)
                except Exception:
                    self._dead(eid, raw)

    def _dead(self, eid, raw: bytes) -> None:
        self.dead += 1
        log.error("ledger %s: undecodable event in entry %s: sent to %sdead", self.region, eid, self.prefix)
        self._dead_letters.append((eid, raw))

    async def step(self, block_ms: int = 200) -> int:
        """Read and apply one batch (pending entries first after a start); returns how many.
        A read of fewer entries than asked, past the backlog, marks the ledger caught up to the
        time the read started."""
        backlog = self._backlog
        started = self.clock()
        res = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: "0" if backlog else ">"},
                                          count=self.batch, block=None if backlog else block_ms)
        entries = res[0][1] if res else []
        if backlog and not entries:
            self._backlog = False
            return 0
        n = await self._apply(entries) if entries else 0  # events applied (entries hold many)
        if not backlog and len(entries) < self.batch:
            await self.redis.set(self.prefix + "caught_up", repr(started))
            self.caught_up = started
        return n

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

    async def sweep(self, budget_s: float = SWEEP_BUDGET_S) -> int:
        """Expire bids past their notice deadline (straight into the ledger): batches of
        ``SWEEP_BATCH`` until none are due, or until ``budget_s`` is spent (the rest waits for
        the next sweep, so consumption is never starved). Returns how many were due."""
        now = self.clock()
        t0 = time.perf_counter()
        total = 0
        while True:
            n = int(await self._sweep(keys=[self.prefix], args=[now, SWEEP_BATCH]))
            total += n
            if n < SWEEP_BATCH or time.perf_counter() - t0 >= budget_s:
                return total

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
