"""Emit ledger events off the request path, and lose none.

Two ways in. ``emit`` (the bid path's selected and response events) appends to an in-memory
buffer and returns: no I/O on the request path. ``emit_durable`` (notices) returns only once the
event is in the stream or in the fsynced spill file, so a notice is acknowledged to the exchange
only when a SIGKILL can no longer lose it; the events of every notice that arrives in one loop
pass go in one pipeline (group commit). With Redis away, a durable wait spills the buffer to disk
at once instead of waiting for it to fill. Then a flush task
writes the buffer to the region's Redis Stream in batches (stream entries of up to 256 events,
one pipeline per flush). With Redis
unreachable the buffer holds up to ``max_buffer`` events; past that they go, oldest first, to an
append-only spill file (fsynced per batch). When Redis answers again the spill file is replayed
first, in order, then the buffer, so the stream keeps emission order. A batch that failed half
way is sent again whole: the stream may then hold an event twice, which the consumer's
idempotency absorbs (events carry stable ids).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections import Counter
from pathlib import Path

from fleet.cache.shard import redis_client
import msgspec

from fleet.ledger.events import Event, encode

log = logging.getLogger("fleet.ledger")
_len = struct.Struct(">I")
_pack = msgspec.msgpack.Encoder().encode


def _records(data: bytes) -> list[bytes]:
    """The whole length-prefixed records of a spill file's bytes."""
    out, i = [], 0
    while i + 4 <= len(data):
        (n,) = _len.unpack_from(data, i)
        if i + 4 + n > len(data):
            break  # a torn last record (crash mid-write): it was never acknowledged anywhere
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out


def stream_key(region: str) -> str:
    return f"fleet:{region}:events"


class EventEmitter:
    def __init__(self, region: str, redis_url: str | None, spill_path: Path, *, max_buffer: int = 50_000,
                 flush_s: float = 0.05, per_entry: int = 256):
        self.region = region
        self.key = stream_key(region)
        self.redis = redis_client(redis_url, decode=False) if redis_url else None
        self.spill_path = Path(spill_path)
        self.max_buffer = max_buffer
        self.flush_s = flush_s
        self.per_entry = per_entry
        self.buffer: list[bytes] = []
        self._inflight = 0  # taken from the buffer by a flush that has not finished
        self.stats: Counter[str] = Counter()
        self._scheduled = False
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self.redis_up = self.redis is not None
        # Durability as a prefix count: events taken in, and events in the stream or on disk.
        # The buffer is always the oldest not-yet-durable events in order, so the two counters
        # say which durable waiters may be answered.
        self._queued = 0
        self._durable = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._urgent = False
        self.on_replayed = None  # called once the spill file reached the stream

    # -- the request path ---------------------------------------------------------------

    def emit(self, ev: Event) -> None:
        self.buffer.append(encode(ev))
        self._queued += 1
        self.stats["emitted"] += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.flush_s, self._spawn)

    async def emit_durable(self, ev: Event) -> str:
        """Emit, and return once the event (and everything emitted before it) is durable:
        ``"stream"`` when it is in the stream, ``"spill"`` when it waits in the spill file
        (``on_replayed`` is called once the spill file has reached the stream)."""
        self.emit(ev)
        if self.redis is None:
            # No stream to reach: the spill file is the only durable place.
            self._spill(self.buffer)
            self._made_durable(len(self.buffer), "spill")
            self.buffer = []
            return "spill"
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, fut))
        if not self._urgent:
            self._urgent = True
            asyncio.get_running_loop().call_soon(self._spawn_urgent)
        where = await fut
        self.stats["durable_acks"] += 1
        return where

    def _spawn_urgent(self) -> None:
        self._urgent = False
        asyncio.get_running_loop().create_task(self._flush_scheduled(reschedule=False))

    def _made_durable(self, n: int, where: str) -> None:
        self._durable += n
        while self._waiters and self._waiters[0][0] <= self._durable:
            _, fut = self._waiters.pop(0)
            if not fut.done():
                fut.set_result(where)

    def emit_many(self, evs: list[Event]) -> None:
        for ev in evs:
            self.emit(ev)

    def _spawn(self) -> None:
        asyncio.get_running_loop().create_task(self._flush_scheduled())

    async def _flush_scheduled(self, reschedule: bool = True) -> None:
        try:
            await self.flush()
        finally:
            if not reschedule:
                return  # an urgent flush for durable waiters; the timer's own flush goes on
            self._scheduled = False
            if self.buffer or self.spilled():
                self._scheduled = True
                asyncio.get_running_loop().call_later(max(self.flush_s, 0.25 if not self.redis_up else 0),
                                                      self._spawn)

    # -- durability ---------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        """Take over spill files this region's replicas left behind (a replica that died with
        Redis down): append them to ours, so the next flush replays them. A file is an orphan
        when nobody holds its lock."""
        import fcntl

        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.spill_path.with_suffix(".lock"), "w")
        fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        adopted = 0
        for other in sorted(self.spill_path.parent.glob(f"{self.region}-*.bin")):
            if other == self.spill_path:
                continue
            with open(other.with_suffix(".lock"), "w") as lk:
                try:
                    fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live replica's
                # Whole records only: a replica killed mid-write left a torn last record, never
                # acknowledged; appended as is, it would misframe everything spilled after it.
                records = _records(other.read_bytes())
                data = b"".join(_len.pack(len(x)) + x for x in records)
                with open(self.spill_path, "ab") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                other.unlink()
                other.with_suffix(".lock").unlink(missing_ok=True)
                adopted += len(data)
        if adopted:
            log.warning("ledger %s: adopted %d bytes of orphaned spill", self.region, adopted)
        return adopted

    def spilled(self) -> bool:
        return self.spill_path.exists() and self.spill_path.stat().st_size > 0

    def _spill(self, items: list[bytes]) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spill_path, "ab") as fh:
            fh.write(b"".join(_len.pack(len(x)) + x for x in items))
            fh.flush()
            os.fsync(fh.fileno())
        self.stats["spilled"] += len(items)

    def _read_spill(self) -> list[bytes]:
        return _records(self.spill_path.read_bytes())

    async def _xadd(self, items: list[bytes]) -> None:
        """Stream entries of up to ``per_entry`` events each (field ``b``: a msgpack array of
        encoded events): one XADD per event would cost ~20 us of client CPU each, this ~1."""
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(items), self.per_entry):
            pipe.xadd(self.key, {"b": _pack(items[start:start + self.per_entry])})
        if items:
            await pipe.execute()

    async def flush(self) -> int:
        """Spill file first, then the buffer; returns how many events reached the stream."""
        if self.redis is None:
            return 0
        loop = asyncio.get_running_loop()
        async with self._lock:
            sent = 0
            items, self.buffer = self.buffer, []
            self._inflight = len(items)
            backing_off = loop.time() < self._retry_at  # Redis just failed: don't wait on it again
            try:
                if backing_off:
                    raise ConnectionError("Redis recently unreachable")
                if self.spilled():
                    old = self._read_spill()
                    await self._xadd(old)
                    self.spill_path.unlink()
                    self.stats["replayed"] += len(old)
                    if self.on_replayed is not None:
                        self.on_replayed()
                    sent += len(old)
                    log.warning("ledger %s: replayed %d spilled events", self.region, len(old))
                await self._xadd(items)
                self._made_durable(len(items), "stream")
                sent += len(items)
                self.stats["streamed"] += len(items)
                if not self.redis_up:
                    log.warning("ledger %s: Redis is back", self.region)
                self.redis_up = True
            except Exception as exc:
                log.debug("ledger %s: flush failed: %r", self.region, exc)
                if self.redis_up:
                    log.error("ledger %s: Redis unavailable (%s): buffering events", self.region, exc)
                self.redis_up = False
                if not backing_off:
                    self._retry_at = loop.time() + 0.25
                self.buffer[:0] = items  # back in front of anything newer
                if self._waiters:
                    # A notice waits for its answer: everything buffered goes to disk now, in
                    # order (a late ack is an exchange's retry, a lost one its money).
                    over = len(self.buffer)
                elif len(self.buffer) > self.max_buffer:
                    # past the bound, the oldest go to disk (after anything spilled before)
                    over = len(self.buffer) - self.max_buffer // 2
                else:
                    over = 0
                if over:
                    self._spill(self.buffer[:over])
                    del self.buffer[:over]
                    self._made_durable(over, "spill")
            finally:
                self._inflight = 0
            return sent

    async def close(self) -> None:
        """Flush what can be flushed; spill the rest (nothing is left only in memory)."""
        await self.flush()
        if self.buffer:
            self._spill(self.buffer)
            self._made_durable(len(self.buffer), "spill")
            self.buffer = []
        if self.redis is not None:
            await self.redis.aclose()

    def summary(self) -> dict:
        return {"emitted": 0, "streamed": 0, "spilled": 0, "replayed": 0, **self.stats, "buffered": len(self.buffer) + self._inflight, "spill_bytes":
                self.spill_path.stat().st_size if self.spill_path.exists() else 0,
                "redis": ("up" if self.redis_up else "down") if self.redis else "none"}
