"""Stage latency histograms: quantiles within one bucket, deltas between snapshots."""

from __future__ import annotations

import random

import pytest

from fleet.obs.histogram import StageHistograms, delta, quantile, summary


def test_quantiles_are_within_one_bucket_of_the_truth():
    rng = random.Random(1)
    h = StageHistograms()
    xs = [rng.lognormvariate(-7, 1.0) for _ in range(20_000)]  # ~1 ms median
    for x in xs:
        h.observe("enrichment", x)
    xs.sort()
    for q in (0.5, 0.9, 0.99):
        true = xs[int(q * len(xs)) - 1]
        got = quantile(h.counts["enrichment"], q)
        assert true <= got <= true * 10 ** (1 / 20) * 1.001  # the bucket's upper bound


def test_delta_isolates_one_step():
    h = StageHistograms()
    for _ in range(100):
        h.observe("pricing", 0.010)
    before = h.snapshot()
    for _ in range(50):
        h.observe("pricing", 0.0001)
    step = delta(h.snapshot(), before)
    s = summary(step)["pricing"]
    assert s["n"] == 50 and s["p99_ms"] == pytest.approx(0.1, rel=0.13)
    assert quantile([0] * 5, 0.5) is None


def test_collector_pauses_are_recorded_by_generation_once_per_process():
    import gc

    from fleet.obs.histogram import watch_gc

    h, other = StageHistograms(), StageHistograms()
    before = list(gc.callbacks)
    # an earlier test in this process may have started a replica's watcher: start from none
    gc.callbacks[:] = [cb for cb in before if not getattr(cb, "_fleet_gc", False)]
    try:
        watch_gc(h)
        watch_gc(other)  # a second watcher in the same process is ignored: one hook per process
        gc.collect()
        gc.collect(0)
        assert sum(h.counts["gc2"]) >= 1 and sum(h.counts["gc0"]) >= 1
        assert other.counts == {}
    finally:
        gc.callbacks[:] = before


def test_frozen_start_up_heap_leaves_full_collections_little_to_walk():
    import gc

    from fleet.runtime.heap import freeze_startup_heap

    keep = [{"n": [i]} for i in range(50_000)]  # long-lived containers, as imports leave behind
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(keep)
        walked = {id(x) for x in gc.get_objects(2)}
        assert not any(id(o) in walked for o in keep)  # no longer in the oldest generation
        cycle: list = []
        cycle.append(cycle)  # cycles made after the freeze are still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
