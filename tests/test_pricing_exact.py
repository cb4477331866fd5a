"""Pricing's faster arithmetic gives the very same prices, bit for bit, as the per-row form it
replaced (``fleet.pipeline.pricing.click_values``): a price that moved by one unit in the last
place would move a bid, a reservation and the ledger's spend."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.pipeline.pricing import Price, WinRateModel, click_value, click_values, model_prices_many


def _reference(ctrs, campaigns, first_price, multiplier, win_rate, source, publisher=None, segments=None):
    """model_prices as it was: numpy scalar arithmetic per row."""
    values = np.array([1000.0 * p * click_value(c) for p, c in zip(ctrs, campaigns)])
    values *= multiplier
    shaded = _shade(win_rate, values, publisher, segments) if any(first_price) else values
    return [Price(value=float(v), bid=float(min(s if fp else v, c.strategy.max_bid)), source=source)
            for v, s, fp, c in zip(values, shaded, first_price, campaigns)]


def _shade(wr, values, key, segments):
    """WinRateModel.shade as it was written for one request's rows."""
    bids = values[:, None] * wr.GRID[None, :]
    log_m = wr.log_m(key) if segments is None else np.array([wr.log_m(key, s) for s in segments])[:, None]
    win = 1.0 / (1.0 + np.exp(-wr.slope * (np.log(np.maximum(bids, 1e-9)) - log_m)))
    return bids[np.arange(len(values)), np.argmax((values[:, None] - bids) * win, axis=1)]


@pytest.fixture(scope="module")
def campaigns(regions):
    return load_catalog(regions.defaults.catalog)


def _ctrs(rnd: random.Random, n: int, kind: str):
    raw = [rnd.choice([rnd.random() * 0.05, rnd.random(), 1e-7, 0.0, 1.0]) for _ in range(n)]
    if kind == "onnx":  # what the tree ensemble returns: column 1 of a float32 [N, 2]
        both = np.array([[1 - x, x] for x in raw], dtype=np.float32)
        return both[:, 1]
    if kind == "float64":
        return np.array(raw)
    return raw  # a list of Python floats


@pytest.mark.parametrize("kind", ["onnx", "float64", "list"])
def test_model_prices_are_bit_for_bit_the_per_row_form(campaigns, kind):
    rnd = random.Random(kind)
    wr = WinRateModel()
    for _ in range(300):  # some fitted publishers and segments, as notices teach them
        wr.observe(f"pub-{rnd.randrange(5)}", rnd.choice(["banner", "video"]), rnd.uniform(0.2, 8), rnd.random() < 0.5)
    for _ in range(2000):
        n = rnd.randint(1, 9)
        cs = [rnd.choice(campaigns) for _ in range(n)]
        ctrs = _ctrs(rnd, n, kind)
        fp = [rnd.random() < 0.75 for _ in range(n)]
        mult = rnd.choice([1.0, 0.5, 0.85, rnd.random()])
        pub = rnd.choice([None, "pub-1", "pub-3", "pub-new"])
        segs = rnd.choice([None, [rnd.choice(["banner", "video", None]) for _ in range(n)]])
        got = model_prices_many([(ctrs, cs, fp, mult, "model:x", pub, segs)], wr)[0]
        want = _reference(ctrs, cs, fp, mult, wr, "model:x", pub, segs)
        assert got == want
        assert all(type(p.value) is float and type(p.bid) is float for p in got)


def test_requests_priced_together_get_the_prices_each_would_get_alone(campaigns):
    """``model_prices_many`` shades the rows of several requests in one pass (the region's
    batched pricing): each request's prices must be bit for bit its own call's, whatever its
    neighbours (other publishers, segments or none, second-price rows, another dtype)."""
    rnd = random.Random(7)
    wr = WinRateModel()
    for _ in range(300):
        wr.observe(f"pub-{rnd.randrange(5)}", rnd.choice(["banner", "video"]), rnd.uniform(0.2, 8), rnd.random() < 0.5)
    for _ in range(500):
        jobs = []
        for _ in range(rnd.randint(1, 6)):
            n = rnd.randint(1, 5)
            cs = [rnd.choice(campaigns) for _ in range(n)]
            jobs.append((_ctrs(rnd, n, rnd.choice(["onnx", "onnx", "float64", "list"])), cs,
                         [rnd.random() < 0.75 for _ in range(n)], rnd.choice([1.0, 0.5, rnd.random()]),
                         rnd.choice(["model:a", "model:b"]), rnd.choice([None, "pub-1", "pub-3", "pub-new"]),
                         rnd.choice([None, [rnd.choice(["banner", "video", None]) for _ in range(n)]])))
        got = model_prices_many(jobs, wr)
        assert got == [_reference(c, cs, fp, m, wr, src, pub, segs) for c, cs, fp, m, src, pub, segs in jobs]


def test_click_values_keep_the_probabilities_dtype(campaigns):
    cs = campaigns[:3]
    f32 = np.array([0.01, 0.02, 0.03], dtype=np.float32)
    assert click_values(f32, cs).dtype == np.array([1000.0 * p * click_value(c) for p, c in zip(f32, cs)]).dtype
    assert click_values([0.01, 0.02, 0.03], cs).dtype == np.float64
