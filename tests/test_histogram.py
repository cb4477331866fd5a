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
