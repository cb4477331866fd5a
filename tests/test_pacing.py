"""Local budget allowance (even delivery, day rollover) and frequency caps."""

from __future__ import annotations

from fleet.campaigns.model import Campaign, Creative, FrequencyCap
from fleet.pipeline.pacing import DAY_S, FrequencyCounter, LocalBudget


def _campaign(budget=864.0, cap=None):
    return Campaign(id="c", advertiser="a", adomain=["a.example"], budget_daily=budget,
                    creatives=[Creative(id="cr", format="banner", w=1, h=1)], freq_cap=cap)


def test_allowance_is_released_evenly_through_the_day():
    b = LocalBudget(share=1.0, burst_s=0)
    c = _campaign(budget=864.0)  # 0.01 per second
    day0 = 100 * DAY_S
    assert b.allowance(c, day0 + 3600) == 36.0
    assert b.reserve(c, 30.0, day0 + 3600)
    assert not b.reserve(c, 7.0, day0 + 3600)  # would pass the 36 released so far
    assert b.reserve(c, 7.0, day0 + 4400)  # later, more is released
    assert b.spent_today("c", day0 + 4400) == 37.0
    assert b.spent_today("c", day0 + DAY_S + 1) == 0.0  # a new UTC day starts from zero
    assert b.allowance(c, day0 + DAY_S - 1) <= 864.0


def test_share_splits_the_budget():
    b = LocalBudget(share=0.25, burst_s=DAY_S)
    c = _campaign(budget=100.0)
    assert b.allowance(c, 5.0) == 25.0


def test_frequency_cap_counts_within_its_window():
    f = FrequencyCounter()
    c = _campaign(cap=FrequencyCap(count=2, window_s=60))
    assert f.allowed("u", c, 0)
    f.record("u", c, 0)
    f.record("u", c, 10)
    assert not f.allowed("u", c, 20)
    assert f.allowed("other", c, 20)
    assert f.allowed("u", c, 61)  # the first one left the window
    assert f.allowed(None, c, 20)  # no identity, nothing to count against
