"""The ingress side of the cache: batched lookups with a deadline, batched fire-and-forget writes.

A replica-local near-cache stands in front of the shards (``near_ttl_s`` > 0): a user this
replica looked up within the TTL is answered from process memory with no await, so the request
pays neither the hop nor the two event-loop passes a shard answer costs, and an entry older than
``near_refresh_s`` is re-read from its shard in the background for the next request
(stale-while-revalidate). Frequency caps stay exact for this replica's own exposures (the
bidder counts those itself and merges by event id); what other replicas and the ledger counted
is seen at most one refresh late, which billing-driven counters already are. Entries are held
packed (``fleet.cache.store.pack_profile``): a hit unpacks a copy, a few microseconds, so
holding thousands of users adds nothing for the garbage collector to walk.

Lookups of concurrent requests going to one shard share one message on the shard socket (a micro-batcher per
shard: one call per shard per batch, never per key), and the request waits at most what its
enrichment budget allows; past it the request goes on with defaults and the shard fills the
miss in the background. Writes (frequency events, publisher feedback, traffic counts) leave the
request path at once: they collect in a per-shard outbox flushed every few milliseconds, and a
batch a shard could not take (a shard restarting) stays in the outbox and is sent again; the
events carry ids, so a resend never counts twice. The outbox is bounded too: past ``max_outbox``
events are refused, counted and logged.

``shards`` maps shard names to anything with the actor's async methods: Ray actor handles in
Serve (``fleet.serve.cache_actor``), or ``fleet.cache.shard.Shard`` objects in-process in tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from functools import partial

from fleet.cache.ring import HashRing
from fleet.cache.store import FreqEvent, Profile, pack_profile, unpack_profile
from fleet.serve.microbatch import MicroBatcher, join_lists

log = logging.getLogger("fleet.cache")


def _call(target, method: str):
    """An awaitable-returning callable for a Ray actor method or a plain async method."""
    fn = getattr(target, method)
    remote = getattr(fn, "remote", None)
    return remote if remote is not None else fn


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class CacheClient:
    def __init__(self, shards: dict, *, window_s: float = 0.0, flush_s: float = 0.02,
                 max_outbox: int = 50_000, clock=time.time, on_answer=None,
                 near_ttl_s: float = 0.0, near_refresh_s: float = 1.0, near_max_users: int = 50_000,
                 near_refresh_timeout_s: float = 1.0, near_refresh_batch_s: float = 0.05):
        """``near_ttl_s`` 0 (the default here) turns the near-cache off; the region app passes
        ``regions.yaml``'s ``defaults.cache`` settings."""
        self.shards = shards
        self.on_answer = on_answer  # seconds from a lookup's submit to its answer's arrival
        self.ring = HashRing(list(shards))
        self.clock = clock
        self.flush_s = flush_s
        self.max_outbox = max_outbox
        self.window_s = window_s
        self.batchers: dict[str, MicroBatcher] = {}
        self.outbox: dict[str, list[tuple]] = defaultdict(list)  # shard -> [(kind, payload)]
        self._outbox_n = 0
        self._inflight = 0  # writes sent, answer not back yet
        self._flushing = False
        self.hours: Counter[int] = Counter()
        self.features: dict[str, tuple[float, float | None]] = {}
        self.daypart: list[float] = [1.0] * 24
        self.features_at = 0.0
        self.stats: Counter[str] = Counter()
        self.per_shard: Counter[str] = Counter()
        self.age_sum = 0.0
        self.near_ttl_s = near_ttl_s
        self.near_refresh_s = near_refresh_s
        self.near_max_users = near_max_users
        self.near_refresh_timeout_s = near_refresh_timeout_s
        # Background re-reads gather for this long and go to their shard in one message: at a
        # high request rate nearly every hit is older than near_refresh_s, and a message per
        # re-read was the shards' and the socket's whole cost (docs/benchmarks.md, cost).
        self.near_refresh_batch_s = near_refresh_batch_s
        self.refreshers: dict[str, MicroBatcher] = {}
        self.near: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # user -> (packed profile, fetched at)
        self._refreshing: set[str] = set()

    # -- reads --------------------------------------------------------------------------

    async def lookup(self, user: str, timeout: float) -> tuple[Profile | None, str]:
        """(profile, "hit") or (None, "miss" | "timeout" | "error"). A near-cache hit returns
        without suspending: awaiting this costs the caller no event-loop pass."""
        if self.near_ttl_s > 0:
            p = self._near(user)
            if p is not None:
                return p, "hit"
        shard = self.ring.owner(user)
        self.per_shard[shard] += 1
        try:
            if timeout <= 0:
                raise asyncio.TimeoutError
            fut = self._batcher(shard).submit([user])
            timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
            try:
                (p,) = await fut
            finally:
                timer.cancel()
        except asyncio.TimeoutError:
            self.stats["timeout"] += 1
            return None, "timeout"
        except Exception as exc:  # shard restarting, actor gone: defaults, never the request
            self.stats["error"] += 1
            self.stats[f"error.{type(exc).__name__}"] += 1
            return None, "error"
        if p is None:
            self.stats["miss"] += 1
            return None, "miss"
        self.stats["hit"] += 1
        self.age_sum += p.age_s
        if self.near_ttl_s > 0:
            self._keep(user, p)
        return p, "hit"

    def _near(self, user: str) -> Profile | None:
        """The near-cache's copy if younger than the TTL (a re-read started when it is older
        than ``near_refresh_s``), else None."""
        e = self.near.get(user)
        if e is None:
            return None
        packed, at = e
        age = self.clock() - at
        if age >= self.near_ttl_s:
            del self.near[user]
            self.stats["near_expired"] += 1
            return None
        if age >= self.near_refresh_s:
            self._refresh(user)
        self.stats["hit"] += 1
        self.stats["near_hit"] += 1
        p = unpack_profile(packed)
        self.age_sum += p.age_s + age
        return p

    def _keep(self, user: str, p: Profile) -> None:
        self.near[user] = (pack_profile(p), self.clock())
        self.near.move_to_end(user)
        if len(self.near) > self.near_max_users:
            self.near.popitem(last=False)  # the least recently fetched

    def _refresh(self, user: str) -> None:
        """Re-read ``user`` from its shard off the request's path (once at a time per user)."""
        if user in self._refreshing:
            return
        self._refreshing.add(user)
        shard = self.ring.owner(user)
        self.per_shard[shard] += 1
        self.stats["near_refresh"] += 1
        fut = self._refresher(shard).submit([user])
        timer = asyncio.get_running_loop().call_later(self.near_refresh_timeout_s, _expire, fut)
        fut.add_done_callback(partial(self._refreshed, user, timer))

    def _refreshed(self, user: str, timer: asyncio.TimerHandle, fut: asyncio.Future) -> None:
        timer.cancel()
        self._refreshing.discard(user)
        if fut.cancelled() or fut.exception() is not None:
            self.stats["near_refresh_failed"] += 1  # the entry stands until its TTL
            return
        (p,) = fut.result()
        if p is not None:  # None: the shard is reading the user through; keep the copy we have
            self._keep(user, p)

    def _batcher(self, shard: str) -> MicroBatcher:
        b = self.batchers.get(shard)
        if b is None:
            target = self.shards[shard]
            b = self.batchers[shard] = MicroBatcher(_call(target, "lookup"), window_s=self.window_s,
                                                    max_rows=256, join=join_lists, coerce=list,
                                                    start=getattr(target, "lookup_start", None),
                                                    observe=self.on_answer)
        return b

    def _refresher(self, shard: str) -> MicroBatcher:
        """The shard's batcher for background re-reads: a window of ``near_refresh_batch_s``."""
        b = self.refreshers.get(shard)
        if b is None:
            b = self.refreshers[shard] = MicroBatcher(_call(self.shards[shard], "lookup"),
                                                      window_s=self.near_refresh_batch_s, max_rows=256,
                                                      join=join_lists, coerce=list)
        return b

    # -- writes -------------------------------------------------------------------------

    def _put(self, shard: str, item: tuple) -> None:
        if self._outbox_n >= self.max_outbox:
            self.stats["outbox_dropped"] += 1
            if self.stats["outbox_dropped"] in (1, 10, 100, 1000) or self.stats["outbox_dropped"] % 10_000 == 0:
                log.error("cache outbox full (%d): %d writes refused so far", self.max_outbox,
                          self.stats["outbox_dropped"])
            return
        self.outbox[shard].append(item)
        self._outbox_n += 1
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_later(self.flush_s, self._spawn_flush)

    def _spawn_flush(self) -> None:
        asyncio.get_running_loop().create_task(self.flush())

    def record(self, events: list[FreqEvent]) -> None:
        for ev in events:
            self._put(self.ring.owner(ev.user), ("f", ev))

    async def record_now(self, events: list[FreqEvent]) -> None:
        """Send now and wait for every shard's answer; raises if a shard could not take them."""
        by_shard: dict[str, list[FreqEvent]] = defaultdict(list)
        for ev in events:
            by_shard[self.ring.owner(ev.user)].append(ev)
        results = await asyncio.gather(*(_call(self.shards[s], "record")(evs) for s, evs in by_shard.items()))
        for (s, evs), res in zip(by_shard.items(), results):
            self.stats["written"] += len(evs)
            self.stats["acked" if res.get("acked") else "unacked"] += len(evs)
            if res.get("dropped"):
                raise RuntimeError(f"shard {s} refused {res['dropped']} writes (its pending queue is full)")

    def feedback(self, publisher: str, won: bool, price: float | None) -> None:
        self._put(self.ring.owner("pub:" + publisher), ("p", (publisher, won, price)))

    def count_request(self, ts: float) -> None:
        self.hours[int(ts // 3600) % 24] += 1

    async def flush(self) -> None:
        """Send every shard's outbox (one call per shard and kind); failed batches stay."""
        try:
            boxes, self.outbox, self._outbox_n = self.outbox, defaultdict(list), 0
            calls = []
            for shard, items in boxes.items():
                evs = [p for k, p in items if k == "f"]
                pubs = [p for k, p in items if k == "p"]
                if evs:
                    calls.append((shard, "record", evs))
                if pubs:
                    calls.append((shard, "publisher", pubs))
            sent = sum(len(payload) for _, _, payload in calls)
            self._inflight += sent
            try:
                results = await asyncio.gather(*(_call(self.shards[s], m)(payload) for s, m, payload in calls),
                                               return_exceptions=True)
            finally:
                self._inflight -= sent
            for (shard, method, payload), res in zip(calls, results):
                kind = "f" if method == "record" else "p"
                if isinstance(res, BaseException):
                    self.stats["write_retry"] += len(payload)
                    # back in the outbox, in front of anything newer
                    self.outbox[shard][:0] = [(kind, p) for p in payload]
                    self._outbox_n += len(payload)
                else:
                    self.stats["written"] += len(payload)
                    self.stats["acked" if res.get("acked") else "unacked"] += len(payload)
        finally:
            self._flushing = False
            if self._outbox_n:
                self._flushing = True
                asyncio.get_running_loop().call_later(max(self.flush_s, 0.05), self._spawn_flush)

    # -- features -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Pull every shard's precomputed features and push this ingress's traffic counts."""
        hours, self.hours = dict(self.hours), Counter()
        owner = self.ring.owner("daypart")
        if hours:
            try:
                await _call(self.shards[owner], "traffic")(hours)
            except Exception as exc:
                self.hours.update(hours)  # not taken: send again next period
                log.warning("cache traffic counts not sent: %s", exc)
        try:
            snaps = await asyncio.gather(*(_call(h, "snapshot")() for h in self.shards.values()))
        except Exception as exc:
            log.warning("cache feature refresh failed: %s", exc)
            return
        feats: dict = {}
        for s in snaps:
            feats.update(s["publishers"])
        self.features = feats
        self.daypart = snaps[[*self.shards].index(owner)]["daypart"]
        self.features_at = self.clock()

    def summary(self) -> dict:
        s = self.stats
        looked = s["hit"] + s["miss"] + s["timeout"] + s["error"]
        return {**s, "lookups": looked, "hit_rate": s["hit"] / looked if looked else 0.0,
                "near_hit_rate": s["near_hit"] / looked if looked else 0.0, "near_users": len(self.near),
                "default_rate": (looked - s["hit"]) / looked if looked else 0.0,
                "age_mean_s": self.age_sum / s["hit"] if s["hit"] else 0.0,
                "outbox": self._outbox_n + self._inflight, "per_shard": dict(self.per_shard),
                "publishers_known": len(self.features),
                "features_age_s": self.clock() - self.features_at if self.features_at else None}
