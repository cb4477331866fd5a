"""Fixed-bucket latency histograms per stage: cheap to record on the hot path, mergeable, and
read as quantiles from the difference of two snapshots (what one benchmark step recorded).

Buckets are log-spaced, 20 per decade from 10 us to 10 s, so a quantile is known to within about
12% (one bucket), which is enough to hold a stage to a millisecond budget.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import time

PER_DECADE = 20
BOUNDS_S = [10 ** (-5 + i / PER_DECADE) for i in range(6 * PER_DECADE + 1)]  # upper bounds


class StageHistograms:
    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def observe(self, stage: str, seconds: float) -> None:
        c = self.counts.get(stage)
        if c is None:
            c = self.counts[stage] = [0] * (len(BOUNDS_S) + 1)
        c[bisect.bisect_left(BOUNDS_S, seconds)] += 1

    def observe_all(self, spent: dict[str, float]) -> None:
        for stage, seconds in spent.items():
            self.observe(stage, seconds)

    def snapshot(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self.counts.items()}


def quantile(counts: list[int], q: float) -> float | None:
    """The upper bound (seconds) of the bucket holding quantile ``q``; None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    run = 0
    for i, n in enumerate(counts):
        run += n
        if run >= rank:
            return BOUNDS_S[i] if i < len(BOUNDS_S) else float("inf")
    return float("inf")


def delta(after: dict[str, list[int]], before: dict[str, list[int]]) -> dict[str, list[int]]:
    out = {}
    for k, v in after.items():
        b = before.get(k, [0] * len(v))
        out[k] = [x - y for x, y in zip(v, b)]
    return out


def summary(counts: dict[str, list[int]]) -> dict[str, dict]:
    """p50/p99 (ms) and count per stage."""
    return {k: {"n": sum(v), "p50_ms": _ms(quantile(v, 0.5)), "p99_ms": _ms(quantile(v, 0.99))}
            for k, v in counts.items()}


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000.0, 4)


async def watch_loop_lag(hist: StageHistograms, every_s: float = 0.02, name: str = "loop_lag",
                         busy=None, idle_s: float = 1.0) -> None:
    """Record the running event loop's lag (how late a short sleep wakes) into ``hist`` forever.

    Anything that awaits on a loop resumes only after whatever else that loop runs meanwhile, so
    this is the floor under an awaited stage's tail: beside the stage histograms it tells a slow
    dependency from a busy process. Every 20 ms, not 5: on this box a wake-up of an idle process
    costs ~150 us of CPU (4% of a core at 5 ms, for every shard and ingress); 50 samples a second
    still give a 4 s benchmark step its p99 (docs/benchmarks.md, loop lag).

    ``busy``: a count of the process's work (requests, lookups); once it has stood still for
    ``idle_s`` the watch sleeps ``idle_s`` between looks at it and records nothing until it moves,
    so an idle region's processes do not wake 50 times a second each for a figure no request is
    waiting behind. (Standing still for one 20 ms sample is not idle: at a few requests a second
    the watch would hardly sample.)
    """
    loop = asyncio.get_running_loop()
    last = busy() if busy is not None else None
    moved = loop.time()
    while True:
        t0 = loop.time()
        await asyncio.sleep(every_s)
        hist.observe(name, max(0.0, loop.time() - t0 - every_s))
        if busy is None:
            continue
        if (n := busy()) != last:
            last, moved = n, loop.time()
        elif loop.time() - moved >= idle_s:
            while (n := busy()) == last:
                await asyncio.sleep(idle_s)
            last, moved = n, loop.time()


def watch_gc(hist: StageHistograms) -> None:
    """Record every garbage collection's pause into ``hist`` as ``gc0``/``gc1``/``gc2`` (by
    generation). A collection stops the whole process, event loop included, so a pause shows in
    the loop's lag and in every awaited stage; recorded beside them, it says whether a tail is the
    collector's. Once per process: later calls with another ``hist`` are ignored."""
    if any(getattr(cb, "_fleet_gc", False) for cb in gc.callbacks):
        return
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            hist.observe(f"gc{info['generation']}", time.perf_counter() - started[0])

    on_gc._fleet_gc = True  # type: ignore[attr-defined]
    gc.callbacks.append(on_gc)
