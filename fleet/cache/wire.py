"""The shards' hot-path protocol: length-prefixed msgpack frames over one pipelined TCP
connection per (ingress, shard).

Why not Ray actor calls: one costs about a millisecond of round trip and half of that in CPU on
each side (docs/benchmarks.md, cache), which alone would take a third of a two-core region's
capacity at its bid rate. Ray still places, names, restarts and controls the shards; lookups and
writes, the per-request traffic, go over this socket at tens of microseconds a call. A shard
that restarts listens on a new port; the client asks Ray for the address again.

Frame: 4-byte big-endian length, then msgpack ``[id, method, arg]``; the answer is
``[id, ok, result-or-error]``. Requests are answered as they finish, so one slow lookup never
holds the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Awaitable, Callable

import msgspec

from fleet.cache.store import FreqEvent, Profile

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_len = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024


def _profile_out(p: Profile | None):
    return None if p is None else (p.segments, p.seen, p.freq, p.age_s)


def _profile_in(t) -> Profile | None:
    if t is None:
        return None
    segs, seen, freq, age = t
    return Profile(tuple(segs), seen, {c: tuple((e, ts) for e, ts in v) for c, v in freq.items()}, age)


async def _read_frame(reader: asyncio.StreamReader):
    (n,) = _len.unpack(await reader.readexactly(4))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    return _dec.decode(await reader.readexactly(n))


def _frame(obj) -> bytes:
    body = _enc.encode(obj)
    return _len.pack(len(body)) + body


async def serve(shard, host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
    """Serve ``shard`` (a ``fleet.cache.shard.Shard``): methods ``lookup`` and ``record``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(rid, method, arg):
            try:
                if method == "lookup":
                    res = [_profile_out(p) for p in await shard.lookup(arg)]
                elif method == "record":
                    res = await shard.record([FreqEvent(u, c, e, ts, tuple(s)) for u, c, e, ts, s in arg])
                else:
                    raise ValueError(f"unknown method {method!r}")
                out = _frame((rid, True, res))
            except Exception as exc:
                out = _frame((rid, False, f"{type(exc).__name__}: {exc}"))
            if not writer.is_closing():
                writer.write(out)

        try:
            while True:
                rid, method, arg = await _read_frame(reader)
                if method == "lookup" and not shard.delay_s:
                    # the common case answers inline: nothing in it waits
                    try:
                        out = _frame((rid, True, [_profile_out(p) for p in shard.lookup_now(arg)]))
                    except Exception as exc:
                        out = _frame((rid, False, f"{type(exc).__name__}: {exc}"))
                    writer.write(out)
                else:
                    asyncio.get_running_loop().create_task(answer(rid, method, arg))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


class RemoteError(Exception):
    """The shard answered with an error."""


class WireClient:
    """One pipelined connection to a shard; ``resolve`` gives its current (host, port)."""

    def __init__(self, resolve: Callable[[], Awaitable[tuple[str, int]]], retry_s: float = 0.1):
        self.resolve = resolve
        self.retry_s = retry_s
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._down_until = 0.0

    async def _connect(self) -> asyncio.StreamWriter:
        w = self._writer
        if w is not None and not w.is_closing():
            return w
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            raise ConnectionError("shard unreachable (retrying shortly)")
        async with self._lock:
            w = self._writer
            if w is not None and not w.is_closing():
                return w
            try:
                host, port = await self.resolve()
                reader, w = await asyncio.open_connection(host, port)
            except Exception as exc:
                self._down_until = loop.time() + self.retry_s  # don't stampede a restarting shard
                raise ConnectionError(f"shard unreachable: {exc!r}") from None
            self._writer = w
            self._pending = {}  # this connection's calls; a closing one keeps its own
            loop.create_task(self._read(reader, w, self._pending))
            return w

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pending: dict[int, asyncio.Future]) -> None:
        try:
            while True:
                rid, ok, res = await _read_frame(reader)
                fut = pending.pop(rid, None)
                if fut is not None and not fut.done():
                    if ok:
                        fut.set_result(res)
                    else:
                        fut.set_exception(RemoteError(res))
        except Exception:
            pass
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for fut in list(pending.values()):
                if not fut.done():
                    fut.set_exception(ConnectionError("shard connection lost"))
            pending.clear()

    async def call(self, method: str, arg):
        writer = await self._connect()
        pending = self._pending  # the dict of the connection just returned
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        pending[rid] = fut
        writer.write(_frame((rid, method, arg)))
        try:
            return await fut
        finally:
            pending.pop(rid, None)

    async def lookup(self, users: list[str]) -> list[Profile | None]:
        return [_profile_in(t) for t in await self.call("lookup", users)]

    async def record(self, events: list[FreqEvent]) -> dict:
        return await self.call("record", [(e.user, e.cid, e.eid, e.ts, e.segments) for e in events])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
