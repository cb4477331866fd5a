"""Control-plane policy state: canary rollouts, region health, cutoff policies (no Ray, no Redis)."""

from __future__ import annotations

import json

import pytest

from fleet.config import TierPolicy, load_regions
from fleet.control.cutoffs import PolicyBook, recompute
from fleet.control.health import HealthBook
from fleet.control.rollout import Rollout, Thresholds, VersionStats, tail_quantile
from fleet.obs.histogram import StageHistograms

V1, V2 = "ctr/v1", "ctr/v2"


def stats(priced: int, errors: int = 0, bid_rate: float = 0.5, efficiency: float = 1.2,
          latency_s: float = 0.002) -> VersionStats:
    h = StageHistograms()
    for _ in range(priced):
        h.observe("pricing", latency_s)
    bids = int(priced * bid_rate)
    price = bids * 2.0
    s = VersionStats(priced=priced, errors=errors, bids=bids, value=price * efficiency, price=price)
    if priced:
        s.latency_counts = h.counts["pricing"]
    return s


def feed(r: Rollout, cand: VersionStats, base: VersionStats) -> None:
    r.observe(V2, cand)
    r.observe(V1, base)
    r.observe("ctr/v0", stats(1000, errors=1000))  # neither version: ignored


def roundtrip(r: Rollout) -> Rollout:
    return Rollout.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False)))


# -- rollouts ---------------------------------------------------------------------------------

def test_healthy_candidate_advances_through_every_step_and_promotes():
    r = Rollout.begin("r1", V2, V1, now=0.0)
    assert (r.share, r.active, r.history[0]["action"]) == (0.05, True, "start")
    t, actions = 0.0, []
    for share in (0.05, 0.25, 0.5):
        assert r.share == share
        feed(r, stats(300), stats(3000))
        assert r.evaluate(t + 10) is None  # samples enough, dwell not over
        t += 31
        actions.append(r.evaluate(t))
    assert actions == ["advance", "advance", "promote"]
    assert (r.state, r.share, r.active) == ("promoted", 1.0, False)
    assert [h["action"] for h in r.history] == ["start", "advance", "advance", "promote"]
    assert [h["share"] for h in r.history] == [0.05, 0.25, 0.5, 1.0]
    assert r.history[1]["figures"]["candidate"]["priced"] == 300
    assert r.evaluate(t + 100) is None  # ended: nothing more happens


def test_advance_resets_the_window():
    r = Rollout.begin("r1", V2, V1, now=0.0)
    feed(r, stats(300), stats(3000))
    assert r.evaluate(31) == "advance"
    assert r.stats == {}
    feed(r, stats(300), stats(3000))
    assert r.evaluate(40) is None  # the dwell restarted at 31
    assert r.evaluate(62) == "advance"


def test_higher_error_share_rolls_back_naming_the_threshold():
    r = Rollout.begin("r1", V2, V1, now=0.0)
    feed(r, stats(400, errors=20), stats(4000, errors=4))  # 5% vs 0.1%
    assert r.evaluate(31) == "rollback"
    assert (r.state, r.share) == ("rolled_back", 0.0)
    last = r.history[-1]
    assert last["action"] == "rollback" and "max_error_delta" in last["reason"] and "0.0500" in last["reason"]
    assert last["figures"]["candidate"]["error_share"] == 0.05


@pytest.mark.parametrize("cand, threshold", [
    (stats(400, latency_s=0.010), "max_p99_ratio"),
    (stats(400, bid_rate=0.2), "bid_rate_tolerance"),
    (stats(400, efficiency=0.8), "min_efficiency_ratio"),
])
def test_each_relative_check_can_fail(cand, threshold):
    r = Rollout.begin("r1", V2, V1, now=0.0)
    feed(r, cand, stats(4000))
    assert r.evaluate(31) == "rollback"
    assert r.history[-1]["reason"].startswith(threshold)


def test_fail_fast_rolls_back_before_dwell_and_min_samples():
    r = Rollout.begin("r1", V2, V1, now=0.0)
    feed(r, stats(19, errors=19), VersionStats())
    assert r.evaluate(1.0) is None  # fewer than 20 priced: not even fail-fast
    feed(r, stats(11, errors=6), VersionStats())
    assert r.evaluate(2.0) == "rollback"
    assert "fail-fast" in r.history[-1]["reason"] and r.state == "rolled_back"


def test_too_few_samples_no_decision():
    r = Rollout.begin("r1", V2, V1, now=0.0)
    feed(r, stats(150, errors=5), stats(5000))  # candidate short of min_priced, bad error share
    assert r.evaluate(100) is None
    r2 = Rollout.begin("r2", V2, V1, now=0.0)
    feed(r2, stats(500), stats(100))  # baseline short: wait for it too
    assert r2.evaluate(100) is None
    feed(r2, VersionStats(), stats(100))
    assert r2.evaluate(100) == "advance"


def test_round_trip_mid_rollout_preserves_behaviour():
    th = Thresholds(steps=(0.1, 0.5), dwell_s=10, min_priced=50)
    r = Rollout.begin("r1", V2, V1, now=0.0, thresholds=th)
    feed(r, stats(60), stats(600))
    assert r.evaluate(11) == "advance"
    feed(r, stats(30), stats(300))  # half a window, then the actor restarts
    r2 = roundtrip(r)
    assert r2.to_dict() == r.to_dict() and r2.thresholds.steps == (0.1, 0.5)
    for x in (r, r2):
        assert x.evaluate(25) is None  # 30 candidate samples < 50
        feed(x, stats(30), stats(300))
        assert x.evaluate(25) == "promote"
    assert r2.to_dict() == r.to_dict()


def test_one_stall_in_a_small_window_is_not_a_slower_tail():
    """30 candidate samples: their p99 is their slowest one. One 18 ms stall against a baseline
    whose p99 over 150 samples is 2 ms must not roll back; a tail slow in six of the 30 must."""
    th = Thresholds(steps=(0.2,), dwell_s=3, min_priced=30, max_p99_ratio=5.0, p99_slack_ms=5.0)
    one = stats(29)
    one.add(stats(1, latency_s=0.018))
    r = Rollout.begin("r1", V2, V1, now=0.0, thresholds=th)
    feed(r, one, stats(150))
    assert r.evaluate(4) == "promote", r.history[-1]
    six = stats(24)
    six.add(stats(6, latency_s=0.018))
    r2 = Rollout.begin("r2", V2, V1, now=0.0, thresholds=th)
    feed(r2, six, stats(150))
    assert r2.evaluate(4) == "rollback"
    assert r2.history[-1]["reason"].startswith("max_p99_ratio: p83.3")
    assert tail_quantile(30) == pytest.approx(1 - 5 / 30) and tail_quantile(5000) == 0.99


def test_version_stats_accumulate():
    a = stats(100, errors=1)
    a.add(stats(100, errors=3, latency_s=0.050))
    assert (a.priced, a.errors, a.error_share) == (200, 4, 0.02)
    assert 50 <= a.p99_ms <= 57  # the slow half holds the p99, within one bucket
    assert VersionStats().p99_ms is None and VersionStats().efficiency is None


def test_bad_thresholds_rejected():
    with pytest.raises(ValueError):
        Thresholds(steps=(0.5, 0.25))
    with pytest.raises(ValueError):
        Rollout.begin("r", V1, V1, now=0.0)


# -- health -----------------------------------------------------------------------------------

def beat(h: HealthBook, region: str, replica: str, now: float, requests=100, errors=0, late=0):
    h.beat(region, replica, now, {"requests": requests, "answered": requests - errors - late,
                                  "errors": errors, "late": late, "bids": requests // 2, "interval_s": 1.0})


def test_expected_silent_and_stale_regions_are_unhealthy():
    h = HealthBook(stale_s=5.0)
    h.expect(["us-east", "eu-west"])
    for t in range(3):
        beat(h, "us-east", "a", float(t))
        beat(h, "us-east", "b", float(t))
    v = h.view(3.0)
    assert v["eu-west"]["status"] == "unhealthy" and v["eu-west"]["last_seen_s_ago"] is None
    e = v["us-east"]
    assert (e["status"], e["replicas"]) == ("healthy", 2)
    assert e["rate"] == pytest.approx(200) and e["bid_rate"] == pytest.approx(0.5)
    assert h.view(6.5)["us-east"]["status"] == "healthy"  # beat at 2.0: still within stale_s
    v = h.view(8.0)["us-east"]
    assert v["status"] == "unhealthy" and "no heartbeat" in v["reason"] and v["replicas"] == 0


def test_errors_degrade_then_recovery_to_healthy():
    h = HealthBook(max_error_share=0.01, max_late_share=0.02)
    for t in range(10):
        beat(h, "ap-southeast", "a", float(t))
    assert h.view(9.0)["ap-southeast"]["status"] == "healthy"
    for t in range(10, 15):
        beat(h, "ap-southeast", "a", float(t), errors=20)
    v = h.view(14.0)["ap-southeast"]
    assert v["status"] == "degraded" and "error share" in v["reason"] and v["error_share"] > 0.01
    t = 15
    while h.view(float(t))["ap-southeast"]["status"] != "healthy":
        beat(h, "ap-southeast", "a", float(t))
        t += 1
        assert t < 120, "never recovered"
    assert t > 20  # a few good beats are not enough to forget a bad spell


def test_late_answers_degrade():
    h = HealthBook()
    beat(h, "eu-west", "a", 0.0, late=5)
    assert h.view(0.0)["eu-west"]["reason"].startswith("late share")


def test_health_round_trip_keeps_last_seen():
    h = HealthBook(stale_s=3.0)
    h.expect(["us-east", "eu-west"])
    beat(h, "us-east", "a", 100.0, errors=5)
    h2 = HealthBook.from_dict(json.loads(json.dumps(h.to_dict())))
    assert h2.view(101.0) == h.view(101.0)
    assert h2.view(110.0)["us-east"]["status"] == "unhealthy"
    h2.forget("us-east", "a")
    assert h2.view(101.0)["us-east"]["reason"] == "never reported"


# -- cutoffs ----------------------------------------------------------------------------------

@pytest.fixture
def base():
    tiers = {name: t.model_dump() for name, t in load_regions().tiers.items()}
    tiers["premium"]["partners"] = {"dsp-a": 40.0, "dsp-b": 25.0}
    return tiers


def test_slow_stage_gets_share_from_pricing(base):
    before = json.dumps(base, sort_keys=True)
    # enrichment p99 12 ms * 1.5 over a 100 ms budget needs 0.18; premium gives 0.16
    new = recompute(base, {"enrichment": 12.0, "targeting": 2.0}, {"premium": 100.0, "standard": 100.0})
    assert json.dumps(base, sort_keys=True) == before  # not mutated
    b, n = base["premium"]["budgets"], new["premium"]["budgets"]
    assert n["enrichment"] == pytest.approx(0.18)
    assert n["pricing"] == pytest.approx(b["pricing"] - 0.02)
    assert n["targeting"] == b["targeting"]  # never shrunk below the base
    assert sum(n.values()) == pytest.approx(sum(b.values())) and sum(n.values()) <= sum(b.values()) + 1e-9
    assert new["standard"]["budgets"]["enrichment"] == pytest.approx(0.18)
    assert new["remnant"] == base["remnant"]  # no typical budget: unchanged
    assert new["premium"]["partners"] == base["premium"]["partners"]
    for policy in new.values():  # still valid tier policies for the regions
        TierPolicy.model_validate({k: v for k, v in policy.items() if k != "partners"})


def test_pricing_never_below_half_its_base(base):
    new = recompute(base, {"enrichment": 60.0, "targeting": 60.0}, {"remnant": 100.0})
    b, n = base["remnant"]["budgets"], new["remnant"]["budgets"]
    assert n["pricing"] == pytest.approx(b["pricing"] / 2)
    assert n["enrichment"] == pytest.approx(b["enrichment"] + b["pricing"] / 2)  # earlier stage first
    assert n["targeting"] == b["targeting"]  # nothing left for it
    assert sum(n.values()) == pytest.approx(sum(b.values()))


def test_partner_entries_are_carried_through_the_stage_recompute(base):
    # Partner cutoffs are fleet.control.partner_policy's (tests/test_partner_policy.py).
    new = recompute(base, {"enrichment": 12.0}, {"premium": 100.0})
    assert new["premium"]["partners"] == {"dsp-a": 40.0, "dsp-b": 25.0}


def test_policy_book_epoch_moves_only_on_change(base):
    book = PolicyBook()
    assert book.update(base) and book.epoch == 1
    assert not book.update(recompute(base, {"enrichment": 1.0}, {"premium": 100.0}))  # fits: same
    assert book.epoch == 1
    assert book.update(recompute(base, {"enrichment": 12.0}, {"premium": 100.0})) and book.epoch == 2
    same = dict(book.policies["standard"])
    assert book.set_tier("standard", same) == 2
    assert book.set_tier("standard", {**same, "budgets": {**same["budgets"], "pricing": 0.3}}) == 3
    again = PolicyBook.from_dict(json.loads(json.dumps(book.to_dict())))
    assert (again.epoch, again.policies) == (3, book.policies)


@pytest.mark.parametrize("policy, message", [
    ({"budgets": {"pricing": 0.5, "bidding": 0.1}}, "unknown stages"),
    ({"budgets": {"pricing": 0.0}}, "must be in (0, 1]"),
    ({"budgets": {"pricing": 1.5}}, "must be in (0, 1]"),
    ({"budgets": {"pricing": 0.7, "enrichment": 0.4}}, "sum to 1.1"),
    ({"budgets": {}}, "non-empty"),
    ({"budgets": {"pricing": 0.5}, "partners": {"dsp-a": -1}}, "partner 'dsp-a'"),
])
def test_invalid_policy_rejected(policy, message):
    book = PolicyBook()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        book.set_tier("premium", policy)
    assert book.epoch == 0 and book.policies == {}
