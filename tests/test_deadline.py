"""The per-request deadline: planning, stage budgets, degradation, and no late answers."""

from __future__ import annotations

import json

import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.campaigns.synth import synth_campaigns
from fleet.pipeline import deadline as deadline_mod
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.deadline import Deadline

REQ = {"id": "d1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "device": {"geo": {"country": "USA"}}}


def test_plan_uses_the_smaller_of_tmax_and_the_region_maximum():
    assert Deadline.plan(0.0, 300, 120, 100, 15).budget_s == pytest.approx(0.085)
    assert Deadline.plan(0.0, 50, 120, 100, 15).budget_s == pytest.approx(0.035)
    assert Deadline.plan(0.0, None, 120, 100, 15).budget_s == pytest.approx(0.085)  # default tmax
    assert Deadline.plan(0.0, 10, 120, 100, 15).budget_s == 0.0


def test_stage_budgets_follow_the_tier_policy(regions):
    dl = Deadline.plan(1.0, 100, 120, 100, 20)
    dl.set_tier("remnant", regions.tiers["remnant"])
    dl.stage_started = 1.0
    dl.stage = "pricing"
    assert dl.stage_deadline() == pytest.approx(1.0 + 0.25 * 0.08)
    dl.stage_started = 1.079
    assert dl.stage_deadline() == pytest.approx(1.08)  # never past the request deadline


def test_an_answer_that_would_be_late_becomes_a_no_bid(regions):
    bidder = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog))
    late = deadline_mod.now() - 1.0  # arrived a second ago: the deadline is long gone
    a = bidder.bid(json.dumps(REQ).encode(), arrival=late)
    assert a.status == 204
    assert a.headers["x-fleet-reason"] == "deadline"
    assert bidder.stats["late_suppressed"] == 1
    assert bidder.budget.reserved == {}  # nothing reserved for a bid that never left
    on_time = bidder.bid(json.dumps({**REQ, "id": "d2"}).encode())
    assert on_time.status == 200


def test_targeting_over_its_budget_truncates_and_says_so(regions, monkeypatch):
    """A slow clock pushes targeting past its share: fewer candidates, flagged, still no late bid."""
    bidder = RegionBidder("us-east", regions, synth_campaigns(4000, seed=2), max_candidates=10_000)
    t = [1000.0]

    def slow_clock():
        t[0] += 0.002  # each look at the clock costs 2 ms of "work"
        return t[0]

    monkeypatch.setattr(deadline_mod, "now", slow_clock)
    body = json.dumps({**REQ, "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}, {"w": 728, "h": 90}]}}],
                       "tmax": 100}).encode()
    a = bidder.bid(body, arrival=slow_clock())
    assert "targeting_truncated" in a.degraded
    if a.status == 200:
        assert json.loads(a.body)["ext"]["fleet"]["degraded"] == ["targeting_truncated"]
    else:
        assert a.headers["x-fleet-degraded"] == "targeting_truncated"
