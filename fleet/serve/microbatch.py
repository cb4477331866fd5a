"""A per-replica micro-batcher: gather the rows of concurrent requests into one outgoing call.

A call that leaves the process costs about a millisecond of Python on each side whatever it
carries (docs/benchmarks.md, served batching), so concurrent requests of one ingress replica
share calls: the first waiter opens a window (sub-millisecond), the window closes early when
enough rows are waiting, and one call carries all of them; each waiter gets its own slice back.
Plain asyncio, no Ray: ``send`` is whatever makes the call. Parts are numpy row blocks by
default (model rows); ``join`` and ``coerce`` make it batch anything sliceable (cache keys).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


def join_lists(parts: list) -> list:
    return list(itertools.chain.from_iterable(parts))


class MicroBatcher:
    def __init__(self, send: Callable[[Any], Awaitable[Any]], *,
                 window_s: float = 0.0005, max_rows: int = 1024,
                 join: Callable[[list], Any] = np.concatenate, coerce: Callable[[Any], Any] = np.asarray,
                 start: Callable[[Any, Callable[[Any], None]], None] | None = None,
                 observe: Callable[[float], None] | None = None):
        """``start``, when given and there is no window, is a callback-style ``send``:
        ``start(rows, done)`` sends and calls ``done(result or exception)`` once, from whatever
        callback reads the answer. Then a batch leaves in a plain callback of the next loop turn
        and its answer reaches the waiters in the callback that read it, so a lookup passes the
        event loop's ready queue twice (send, answer) instead of four times through tasks.
        ``observe``, when given, is called with each waiter's seconds from its submit to its
        answer's arrival (the moment its future is resolved, before the waiter runs again):
        what the far side and the wire took, apart from the wait for this loop afterwards."""
        self.send = send
        self.start = start if window_s <= 0 else None
        self.join = join
        self.coerce = coerce
        self.window_s = window_s
        self.max_rows = max_rows
        self.observe = observe
        self._parts: list[tuple[Any, asyncio.Future, float]] = []
        self._rows = 0
        self._full: asyncio.Event | None = None
        self.calls = 0

    async def __call__(self, rows):
        return await self.submit(rows)

    def submit(self, rows) -> asyncio.Future:
        """Queue ``rows``; the future gets this caller's slice of the answer. (No coroutine or
        task per caller: a caller with a deadline can time the future out itself.)"""
        fut = asyncio.get_running_loop().create_future()
        self._parts.append((rows, fut, time.perf_counter() if self.observe is not None else 0.0))
        self._rows += len(rows)
        if self.start is not None:
            if len(self._parts) == 1:
                asyncio.get_running_loop().call_soon(self._flush_now)
            elif self._rows >= self.max_rows:
                self._flush_now()
        elif len(self._parts) == 1:
            self._full = asyncio.Event()
            asyncio.get_running_loop().create_task(self._flush_later(self._full))
        elif self._rows >= self.max_rows and self._full is not None:
            self._full.set()
        return fut

    def _take(self) -> list:
        parts, self._parts, self._rows, self._full = self._parts, [], 0, None
        if parts:
            self.calls += 1
        return parts

    def _flush_now(self) -> None:
        parts = self._take()
        if not parts:  # flushed early, when full
            return
        try:
            self.start(self.join([p for p, _, _ in parts]), lambda res: self._deliver(parts, res))
        except Exception as exc:
            self._deliver(parts, exc)

    async def _flush_later(self, full: asyncio.Event) -> None:
        if self.window_s <= 0:
            await asyncio.sleep(0)  # no window: whatever this loop turn gathered goes together
        else:
            try:
                await asyncio.wait_for(full.wait(), self.window_s)
            except asyncio.TimeoutError:
                pass
        parts = self._take()
        try:
            res = await self.send(self.join([p for p, _, _ in parts]))
        except BaseException as exc:  # every waiter learns of the failure, none hangs
            res = exc
        self._deliver(parts, res)

    def _deliver(self, parts: list, res) -> None:
        """Each waiter its own slice of ``res``, or the exception ``res`` is."""
        if self.observe is not None:
            t = time.perf_counter()
            for _, _, t0 in parts:  # late ones too: they are the answer's tail
                self.observe(t - t0)
        if not isinstance(res, BaseException):
            try:
                res = self.coerce(res)
            except Exception as exc:
                res = exc
        if isinstance(res, BaseException):
            err = res if isinstance(res, Exception) else RuntimeError(repr(res))
            for _, fut, _ in parts:
                if not fut.done():
                    fut.set_exception(err)
            return
        start = 0
        for rows, fut, _ in parts:
            if not fut.done():  # a waiter that timed out has gone; its slice is dropped
                fut.set_result(res[start:start + len(rows)])
            start += len(rows)
