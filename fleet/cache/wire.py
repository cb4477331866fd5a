"""The shards' hot-path protocol: length-prefixed msgpack frames over one pipelined TCP
connection per (ingress, shard).

Why not Ray actor calls: one costs about a millisecond of round trip and half of that in CPU on
each side (docs/benchmarks.md, cache), which alone would take a third of a two-core region's
capacity at its bid rate. Ray still places, names, restarts and controls the shards; lookups and
writes, the per-request traffic, go over this socket at tens of microseconds a call. A shard
that restarts listens on a new port; the client asks Ray for the address again.

Frame: 4-byte big-endian length, then msgpack ``[id, method, arg]``; the answer is
``[id, ok, result-or-error]``. Requests are answered as they finish, so one slow lookup never
holds the connection. Both ends are asyncio protocols: a frame is handled in the callback that
read it, so an answer does not queue behind the rest of a busy loop once more to be read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable

import msgspec

from fleet.cache.store import FreqEvent, Profile, profile_tuple

log = logging.getLogger("fleet.cache")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_len = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024


def _profile_out(p: Profile | None):
    return None if p is None else profile_tuple(p)


def _profile_in(t) -> Profile | None:
    if t is None:
        return None
    segs, seen, freq, age = t
    return Profile(tuple(segs), seen, {c: tuple((e, ts) for e, ts in v) for c, v in freq.items()}, age)


def _frame(obj) -> bytes:
    body = _enc.encode(obj)
    return _len.pack(len(body)) + body


class _Frames(asyncio.Protocol):
    """Frames straight out of ``data_received``: a message is handled in the same loop turn
    that read it. (With asyncio streams an answer went through the ready queue twice, once to
    wake the reading task and once to wake the caller, and paid the loop's lag each time.)"""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, size = 0, len(buf)
        msgs = []
        with memoryview(buf) as mv:
            while size - pos >= 4:
                (n,) = _len.unpack_from(mv, pos)
                if n > MAX_FRAME:
                    self.transport.close()
                    return
                if size - pos - 4 < n:
                    break
                try:
                    msgs.append(_dec.decode(mv[pos + 4:pos + 4 + n]))
                except msgspec.DecodeError:
                    self.transport.close()
                    return
                pos += 4 + n
        del buf[:pos]
        for m in msgs:
            self.message(m)

    def message(self, msg) -> None:
        raise NotImplementedError


class _ShardSide(_Frames):
    def __init__(self, shard) -> None:
        super().__init__()
        self.shard = shard

    def message(self, msg) -> None:
        try:
            rid, method, arg = msg
        except (TypeError, ValueError):
            self.transport.close()
            return
        if method == "lookup" and not self.shard.delay_s:
            # the common case answers inline: nothing in it waits
            try:
                out = _frame((rid, True, [_profile_out(p) for p in self.shard.lookup_now(arg)]))
            except Exception as exc:
                out = _frame((rid, False, f"{type(exc).__name__}: {exc}"))
            self.transport.write(out)
        else:
            asyncio.get_running_loop().create_task(self.answer(rid, method, arg))

    async def answer(self, rid, method, arg) -> None:
        try:
            if method == "lookup":
                res = [_profile_out(p) for p in await self.shard.lookup(arg)]
            elif method == "record":
                res = await self.shard.record([FreqEvent(u, c, e, ts, tuple(s)) for u, c, e, ts, s in arg])
            else:
                raise ValueError(f"unknown method {method!r}")
            out = _frame((rid, True, res))
        except Exception as exc:
            out = _frame((rid, False, f"{type(exc).__name__}: {exc}"))
        if not self.transport.is_closing():
            self.transport.write(out)


async def serve(shard, host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
    """Serve ``shard`` (a ``fleet.cache.shard.Shard``): methods ``lookup`` and ``record``."""
    return await asyncio.get_running_loop().create_server(lambda: _ShardSide(shard), host, port)


class RemoteError(Exception):
    """The shard answered with an error."""


def _failure(res) -> Exception:
    return res if isinstance(res, Exception) else RemoteError(res)


class _ClientSide(_Frames):
    """Calls under way on one connection: id -> ``reply(ok, result-or-error)``, called from
    ``data_received`` as the answer is read (or with a ConnectionError when the connection goes).
    For the client's stall watch (loop time): ``heard``, when a frame last came; ``busy_since``,
    when ``pending`` last went from empty to not; ``unheard_since``, the first send after the
    last frame heard (a caller that gave up takes its call out of ``pending``, not its send)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, Callable[[bool, object], None]] = {}
        self.heard = self.busy_since = self.unheard_since = 0.0
        self.watched = False

    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time()
        super().data_received(data)

    def silent_for(self, now: float) -> float:
        """How long the shard has owed an answer with nothing heard: since a send that no frame
        followed, or since calls began to wait (a lone slow call, its answer the last one due)."""
        since = self.unheard_since if self.unheard_since > self.heard else now
        if self.pending:
            since = min(since, max(self.heard, self.busy_since))
        return now - since

    def owed(self) -> bool:
        return bool(self.pending) or self.unheard_since > self.heard

    def message(self, msg) -> None:
        rid, ok, res = msg
        reply = self.pending.pop(rid, None)
        if reply is not None:
            _hand(reply, ok, res)

    def connection_lost(self, exc) -> None:
        pending, self.pending = self.pending, {}
        for reply in pending.values():
            _hand(reply, False, ConnectionError("shard connection lost"))


def _hand(reply, ok: bool, res) -> None:
    try:
        reply(ok, res)
    except Exception:  # one caller's bug must not stop the frames behind it, or the others' failures
        log.exception("shard answer handler failed")


class WireClient:
    """One pipelined connection to a shard; ``resolve`` gives its current (host, port)."""

    def __init__(self, resolve: Callable[[], Awaitable[tuple[str, int]]], retry_s: float = 0.1,
                 connect_s: float = 1.0, stall_s: float = 2.0):
        self.resolve = resolve
        self.retry_s = retry_s
        # Finding the shard and connecting take at most this long: every call waits behind the
        # lock meanwhile (a callback lookup in a task of its own), so a shard address that never
        # resolves or a connect that hangs (a partitioned node drops the SYN) piled them up for
        # as long as the kernel kept trying.
        self.connect_s = connect_s
        # A shard that stops answering with its connection still open (a frozen process or VM,
        # a partition that drops packets: no reset ever comes) is cut off after this long with
        # calls waiting and not a frame heard: its callers hear a ConnectionError, and the next
        # call connects afresh. Before, every call on it waited for ever (each bid's lookup gave
        # up at its deadline, its entry stayed). Answers normally come in milliseconds; a slow
        # write (a record waiting on Redis) does not count while other answers still come.
        self.stall_s = stall_s
        self._conn: _ClientSide | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._down_until = 0.0

    def _live(self) -> _ClientSide | None:
        c = self._conn
        return c if c is not None and c.transport is not None and not c.transport.is_closing() else None

    async def _connect(self) -> _ClientSide:
        c = self._live()
        if c is not None:
            return c
        loop = asyncio.get_running_loop()
        if loop.time() < self._down_until:
            raise ConnectionError("shard unreachable (retrying shortly)")
        async with self._lock:
            c = self._live()
            if c is not None:
                return c
            try:
                async with asyncio.timeout(self.connect_s):
                    host, port = await self.resolve()
                    _, c = await loop.create_connection(_ClientSide, host, port)
            except Exception as exc:
                self._down_until = loop.time() + self.retry_s  # don't stampede a restarting shard
                raise ConnectionError(f"shard unreachable: {exc!r}") from None
            self._conn = c
            return c

    async def call(self, method: str, arg):
        c = await self._connect()
        fut = asyncio.get_running_loop().create_future()

        def reply(ok, res) -> None:
            if not fut.done():
                fut.set_result(res) if ok else fut.set_exception(_failure(res))

        rid = self._send(c, method, arg, reply)
        try:
            return await fut
        finally:
            c.pending.pop(rid, None)

    def _send(self, c: _ClientSide, method: str, arg, reply) -> int:
        rid = next(self._ids)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if c.unheard_since <= c.heard:
            c.unheard_since = now
        if not c.pending:
            c.busy_since = now
        if not c.watched:
            c.watched = True
            loop.call_later(self.stall_s, self._watch, c)
        c.pending[rid] = reply  # this connection's calls: a lost one fails them, never a newer one's
        c.transport.write(_frame((rid, method, arg)))
        return rid

    def _watch(self, c: _ClientSide) -> None:
        """Every ``stall_s`` while calls wait: cut a connection that has gone silent on them."""
        if not c.owed() or c.transport is None or c.transport.is_closing():
            c.watched = False
            return
        loop = asyncio.get_running_loop()
        silent = c.silent_for(loop.time())
        if silent >= self.stall_s:
            log.warning("shard connection silent for %.1f s with %d calls waiting: reconnecting",
                        silent, len(c.pending))
            c.watched = False
            c.transport.abort()  # connection_lost fails every waiting call
            return
        loop.call_later(self.stall_s - silent, self._watch, c)

    def start(self, method: str, arg, done: Callable[[object], None]) -> None:
        """Send now when connected, and call ``done(result or exception)`` from the callback
        that reads the answer (no task on either side); when not connected, connect in a task
        first. For callers that want no trip through the event loop's queue per answer
        (``MicroBatcher(start=...)``)."""
        c = self._live()
        if c is None:
            async def connect_first() -> None:
                try:
                    done(await self.call(method, arg))
                except Exception as exc:
                    done(exc)

            asyncio.get_running_loop().create_task(connect_first())
            return
        self._send(c, method, arg, lambda ok, res: done(res if ok else _failure(res)))

    async def lookup(self, users: list[str]) -> list[Profile | None]:
        return [_profile_in(t) for t in await self.call("lookup", users)]

    def lookup_start(self, users: list[str], done: Callable[[object], None]) -> None:
        """``lookup`` in the callback style of ``start``."""
        def profiles(res) -> None:
            if isinstance(res, Exception):
                done(res)
                return
            try:
                done([_profile_in(t) for t in res])
            except Exception as exc:  # a malformed answer fails the batch, not the reader
                done(exc)

        self.start("lookup", users, profiles)

    async def record(self, events: list[FreqEvent]) -> dict:
        return await self.call("record", [(e.user, e.cid, e.eid, e.ts, e.segments) for e in events])

    def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
