"""A cache shard: the in-memory store, written through to Redis, read through on a miss.

Plain asyncio, no Ray (``fleet.serve.cache_actor`` is the thin actor around it), so tests drive
it directly against a real ``redis-server``.

Writes. ``record`` counts events in memory at once (decisions see them immediately) and
returns ``acked=True`` only once Redis has them. Every write goes through one ordered queue; with
Redis unreachable the queue holds them (bounded: past ``max_pending`` a write is refused, counted
in ``dropped`` and logged, never silently lost) and the flush loop writes them in order when Redis
returns. Frequency events are stored as sorted-set members keyed by event id, so a replayed write
is a no-op rather than a second count.

Reads. ``lookup`` answers from memory; a user not loaded yet is a miss (the caller uses defaults)
and is read from Redis in the background, merged by event id with anything counted meanwhile.

Features. Per-publisher win rate and clearing-price level and the region's hour-of-day traffic
weights are recomputed from Redis every ``refresh_s`` for the publishers this shard owns, not per
request; the ingress pulls the table on the same period.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from fleet.cache.ring import HashRing
from fleet.cache.store import FreqEvent, Profile, PublisherStats, ShardStore
from fleet.obs.histogram import StageHistograms, watch_gc, watch_loop_lag

log = logging.getLogger("fleet.cache")

PROFILE_TTL_S = 30 * 86_400


def redis_client(url: str, decode: bool = True, timeout_s: float = 0.5):
    """An asyncio Redis client that fails fast: no retries, short timeouts. A stalled Redis must
    cost the shard one bounded attempt, then the pending queue, never a request."""
    import redis.asyncio as aredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return aredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=0.5,
                                 retry=Retry(NoBackoff(), 0), decode_responses=decode)


class Shard:
    def __init__(self, region: str, name: str, redis_url: str | None, *, shards: list[str] | None = None,
                 max_users: int = 500_000, window_s: float = 86_400.0, max_pending: int = 100_000,
                 refresh_s: float = 45.0, stale_s: float = 300.0, flush_batch: int = 512, clock=time.time):
        self.region = region
        self.name = name
        self.prefix = f"fleet:{region}:"
        self.redis = redis_client(redis_url) if redis_url else None
        self.ring = HashRing(shards or [name])
        self.store = ShardStore(max_users, window_s, clock)
        self.clock = clock
        self.max_pending = max_pending
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self.flush_batch = flush_batch
        self.delay_s = 0.0  # injected fault: how slow lookups are (tests, drills)

        self.queue: deque[tuple[int, tuple]] = deque()
        self._seq = itertools.count(1)
        self.acked_seq = 0
        self._lock = asyncio.Lock()
        self.redis_up = self.redis is not None
        self._retry_at = 0.0
        self._to_fill: set[str] = set()
        self._filling = False
        self.pubs: dict[str, PublisherStats] = {}
        self.features: dict[str, tuple[float, float | None]] = {}
        self.hours: list[float] = [0.0] * 24
        self.features_at = 0.0
        self._tasks: list[asyncio.Task] = []
        self._closed: asyncio.Event | None = None
        self.counts = dict(lookups=0, keys=0, hits=0, misses=0, fills=0, fill_errors=0, writes=0,
                           acked=0, dropped=0, age_sum=0.0, age_max=0.0)
        self.loop_lag = StageHistograms()  # lookups are answered on this loop: its lag is their floor

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Background loops (flush, feature refresh, pruning); needs a running event loop."""
        if not self._tasks and self._closed is None:
            self._closed = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._flush_loop()), loop.create_task(self._refresh_loop()),
                           loop.create_task(watch_loop_lag(self.loop_lag, busy=self._work))]
            watch_gc(self.loop_lag)

    def _work(self) -> int:
        """Lookups and writes so far: the loop-lag watch rests while this stands still."""
        return self.counts["lookups"] + self.counts["writes"]

    async def close(self) -> None:
        # A flag as well as cancel(): a cancellation that lands inside the Redis client can be
        # absorbed there, and the loop must still end.
        if self._closed is not None:
            self._closed.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.redis is not None:
            await self.redis.aclose()

    # -- reads --------------------------------------------------------------------------

    async def lookup(self, users: list[str]) -> list[Profile | None]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.lookup_now(users)

    def lookup_now(self, users: list[str]) -> list[Profile | None]:
        """``lookup`` without the injected delay: no await, so the socket server answers it
        inline instead of paying for a task per request."""
        self.start()
        now = self.clock()
        out = []
        c = self.counts
        c["lookups"] += 1
        c["keys"] += len(users)
        for u in users:
            p = self.store.view(u, now)
            if p is None:
                c["misses"] += 1
                self._to_fill.add(u)
            else:
                c["hits"] += 1
                c["age_sum"] += p.age_s
                if p.age_s > c["age_max"]:
                    c["age_max"] = p.age_s
                if p.age_s > self.stale_s:
                    self._to_fill.add(u)  # serve it, and re-read (a key that moved shards)
            out.append(p)
        if self._to_fill and not self._filling:
            self._filling = True
            asyncio.get_running_loop().create_task(self._fill())
        return out

    async def _fill(self) -> None:
        """Read missed users from Redis in one pipeline and merge them in."""
        try:
            while self._to_fill:
                users = list(self._to_fill)[:512]
                self._to_fill.difference_update(users)
                if self.redis is None:
                    for u in users:  # memory-only shard: nothing to read, the entry is complete
                        self.store.merge(u, (), 0.0, [])
                    continue
                now = self.clock()
                pipe = self.redis.pipeline(transaction=False)
                for u in users:
                    pipe.hgetall(self.prefix + "u:" + u)
                    pipe.zrangebyscore(self.prefix + "f:" + u, now - self.store.window_s, "+inf", withscores=True)
                try:
                    res = await pipe.execute()
                except Exception as exc:  # Redis away: stay a miss, try again on the next lookup
                    self.counts["fill_errors"] += 1
                    log.warning("shard %s: read-through failed: %s", self.name, exc)
                    return
                for i, u in enumerate(users):
                    h, evs = res[2 * i], res[2 * i + 1]
                    segs = tuple(k[2:] for k in h if k.startswith("s:"))
                    events = []
                    for member, ts in evs:
                        cid, _, eid = member.partition("|")
                        events.append((cid, eid, float(ts)))
                    self.store.merge(u, segs, float(h.get("seen", 0.0)), events)
                self.counts["fills"] += len(users)
        finally:
            self._filling = False

    # -- writes -------------------------------------------------------------------------

    async def record(self, events: list[FreqEvent]) -> dict:
        """Count ``events`` now; ``acked`` once Redis has every one of them."""
        for ev in events:
            self.store.apply(ev)
        return await self._write([("f", ev) for ev in events])

    async def publisher(self, items: list[tuple[str, bool, float | None]]) -> dict:
        """Win (True) / loss (False) feedback per publisher, with the clearing price of a win."""
        for pid, won, price in items:
            s = self.pubs.setdefault(pid, PublisherStats())
            if won:
                s.wins += 1
                s.price_sum += price or 0.0
            else:
                s.losses += 1
        return await self._write([("p", *it) for it in items])

    async def traffic(self, hours: dict[int, int]) -> dict:
        """Request counts by UTC hour of day from an ingress (the dayparting weights' source)."""
        for h, n in hours.items():
            self.hours[h] += n
        return await self._write([("h", h, n) for h, n in hours.items()])

    async def _write(self, ops: list[tuple]) -> dict:
        self.start()
        self.counts["writes"] += len(ops)
        last, refused = 0, 0
        for op in ops:
            if len(self.queue) >= self.max_pending:
                refused += 1
                continue
            last = next(self._seq)
            self.queue.append((last, op))
        if refused:
            self.counts["dropped"] += refused
            log.error("shard %s: pending queue full (%d): %d writes refused, counted in memory only",
                      self.name, self.max_pending, refused)
        await self.flush()
        return {"acked": refused == 0 and self.acked_seq >= last, "pending": len(self.queue),
                "dropped": refused}

    def _encode(self, pipe, op: tuple) -> None:
        p = self.prefix
        if op[0] == "f":
            ev: FreqEvent = op[1]
            fk, uk = p + "f:" + ev.user, p + "u:" + ev.user
            pipe.zadd(fk, {f"{ev.cid}|{ev.eid}": ev.ts})
            pipe.zremrangebyscore(fk, "-inf", ev.ts - self.store.window_s)
            pipe.expire(fk, int(self.store.window_s))
            pipe.hset(uk, mapping={"seen": ev.ts, **{"s:" + s: 1 for s in ev.segments}})
            pipe.expire(uk, PROFILE_TTL_S)
        elif op[0] == "p":
            _, pid, won, price = op
            pipe.sadd(p + "pubs", pid)
            if won:
                pipe.hincrby(p + "p:" + pid, "wins", 1)
                pipe.hincrbyfloat(p + "p:" + pid, "price_sum", price or 0.0)
            else:
                pipe.hincrby(p + "p:" + pid, "losses", 1)
        elif op[0] == "h":
            pipe.hincrby(p + "hours", str(op[1]), op[2])

    async def flush(self) -> int:
        """Write the queue to Redis in order, a transaction per batch; returns how many went."""
        if self.redis is None or not self.queue:
            return 0
        if not self.redis_up and time.monotonic() < self._retry_at:
            return 0  # Redis just failed: don't make every writer wait on it again
        written = 0
        async with self._lock:
            if not self.redis_up and time.monotonic() < self._retry_at:
                return 0  # failed while this writer waited for the lock: one attempt is enough
            while self.queue:
                batch = list(itertools.islice(self.queue, 0, self.flush_batch))
                pipe = self.redis.pipeline(transaction=True)
                for _, op in batch:
                    self._encode(pipe, op)
                try:
                    await pipe.execute()
                except Exception as exc:
                    if self.redis_up:
                        log.error("shard %s: Redis unavailable (%s); %d writes pending", self.name, exc,
                                  len(self.queue))
                    self.redis_up = False
                    self._retry_at = time.monotonic() + 0.25
                    return written
                for _ in batch:
                    self.queue.popleft()
                self.acked_seq = batch[-1][0]
                self.counts["acked"] += len(batch)
                written += len(batch)
                if not self.redis_up:
                    log.warning("shard %s: Redis is back; pending writes flushed", self.name)
                self.redis_up = True
        return written

    async def _pause(self, seconds: float) -> bool:
        """Sleep; False once the shard is closing."""
        try:
            await asyncio.wait_for(self._closed.wait(), seconds)
        except asyncio.TimeoutError:
            return True
        return False

    async def _flush_loop(self) -> None:
        # A plain sleep, not _pause: this loop wakes five times a second in every shard, and
        # _pause's wait_for makes a task each time; close() cancels it, and the flag ends it
        # should a cancellation be absorbed inside the Redis client.
        while not self._closed.is_set():
            await asyncio.sleep(0.2)
            try:
                if self.queue:
                    await self.flush()
            except Exception:  # never let the loop die
                log.exception("shard %s: flush loop", self.name)

    # -- features -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Recompute the publisher and daypart features from Redis (memory when it is away)."""
        if self.redis is not None and self.redis_up:
            try:
                pids = [pid for pid in await self.redis.smembers(self.prefix + "pubs")
                        if self.ring.owner("pub:" + pid) == self.name]
                pipe = self.redis.pipeline(transaction=False)
                for pid in pids:
                    pipe.hgetall(self.prefix + "p:" + pid)
                pipe.hgetall(self.prefix + "hours")
                res = await pipe.execute()
                self.pubs = {pid: PublisherStats(int(h.get("wins", 0)), int(h.get("losses", 0)),
                                                 float(h.get("price_sum", 0.0)))
                             for pid, h in zip(pids, res[:-1])}
                hours = res[-1]
                self.hours = [float(hours.get(str(h), 0)) for h in range(24)]
            except Exception as exc:
                log.warning("shard %s: feature refresh from Redis failed, using memory: %s", self.name, exc)
        self.features = {pid: s.features() for pid, s in self.pubs.items()}
        self.features_at = self.clock()
        self.store.prune()

    def daypart(self) -> list[float]:
        """Hour-of-day traffic weights (mean 1.0); flat until there is traffic to go on."""
        total = sum(self.hours)
        return [24.0 * h / total for h in self.hours] if total else [1.0] * 24

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("shard %s: refresh loop", self.name)
            if not await self._pause(self.refresh_s):
                return

    def snapshot(self) -> dict:
        """The precomputed features, as the ingress pulls them."""
        return {"publishers": self.features, "daypart": self.daypart(), "at": self.features_at,
                "hours": self.hours}

    def stats(self) -> dict:
        c = dict(self.counts)
        hits = c.pop("age_sum")
        c["age_mean_s"] = hits / c["hits"] if c["hits"] else 0.0
        c["hit_rate"] = c["hits"] / c["keys"] if c["keys"] else 0.0
        return {"shard": self.name, "region": self.region, "users": len(self.store.users),
                "pending": len(self.queue), "redis": ("up" if self.redis_up else "down") if self.redis else "none",
                "delay_s": self.delay_s, "loop_lag": self.loop_lag.snapshot(), **c}
