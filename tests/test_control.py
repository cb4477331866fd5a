"""Control's pacing loop in-process: control, three regions' lease budgets and a seeded market on
a simulated clock (no Ray; Redis where persistence is the point).

The closed loop is the same code the fleet runs (``Control.sync``/``tick``, ``LeaseBudget``);
only the auctions are drawn (``fleet.harness.pacing_loop``), so the pacing figures can be checked exactly.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from fleet.config import load_regions
from fleet.control.api import route
from fleet.control.messages import Report
from fleet.control.pacer import Flight, Pacer, PacingSettings
from fleet.control.service import Control
from fleet.control.standin import PHANTOM
from fleet.harness.pacing_loop import Clock, Loop


def _control(clock, redis=None):
    return Control(load_regions(), redis, clock=clock)


def test_pacing_closed_loop_delivers_each_budget_on_plan():
    clock = Clock()
    control = _control(clock)

    async def go():
        await control.start()
        loop = Loop(clock, control)
        await loop.setup()
        await loop.run(loop.start + loop.day_s + 15)
        return loop

    loop = asyncio.run(go())
    rep = loop.report()
    assert len(rep["finals"]) >= 45
    off = {cid: round(x, 4) for cid, x in rep["finals"].items() if abs(x - 1.0) > 0.02}
    assert not off, f"campaigns outside ±2% of budget: {off}"
    assert rep["p90_error"] <= 0.07, rep  # the contract: 0.10, at every 30 s mark
    assert loop.bound_violations == 0


def test_pacing_from_the_first_mark_in_a_live_like_day():
    """As the live run (``fleet sim pacing``): a flat, unconstraining probe flight first (throttles
    left wide open, and a probe's bids win less than the paced day's), then budgets of 0.45 of what
    the fleet can win over a 600 s day, where the right throttle is 0.01 to 0.2 and some notices
    are seconds late. The throttle starts from observed rates, not from where the probe left it,
    so the first 30 s marks are on plan too."""
    clock = Clock()
    control = _control(clock)

    async def go():
        await control.start()
        loop = Loop(clock, control, n=50, day_s=600.0, seed=1, fill=0.45, live=True, probe_s=30.0)
        await loop.setup()
        await loop.run(loop.start + loop.day_s + 15)
        return loop

    loop = asyncio.run(go())
    rep = loop.report()
    assert len(rep["finals"]) >= 30
    assert rep["p90_all"] <= 0.08, rep  # the contract: 0.10
    assert rep["median_by_mark"][30] <= 0.2 and rep["median_by_mark"][60] <= 0.1, rep["median_by_mark"]
    assert all(0.96 <= x <= 1.0 for x in rep["finals"].values()), rep["finals"]
    assert sum(abs(x - 1.0) <= 0.02 for x in rep["finals"].values()) >= 0.9 * len(rep["finals"])
    assert loop.bound_violations == 0


def test_throttle_is_set_from_observed_rates_at_the_first_interval():
    """The throttle is what spends the plan at the observed opportunity rate and spend per
    participation, however far from p_start; a new flight's first leases carry its own."""
    t0 = 1_000_000.0
    pacer = Pacer(PacingSettings(), {"us-east": 1.0}, clock=lambda: t0)
    pacer.put_flight(Flight("c", 60.0, t0 - 0.5, t0 + 599.5, curve="even"))  # 0.1 a second
    opp, part, spend = 0, 0, 0.0

    def report(t: float, spent: float) -> None:
        # 200 eligible a second, a quarter take part, spending 0.002 each (max bid 0.01)
        nonlocal opp, part, spend
        opp, part, spend = opp + 200, part + 50, spend + spent
        pacer.absorb(Report(region="us-east", replica="r1", ts=t, spend={"c": spend}, opportunities={"c": opp},
                            throttled={"c": opp - part}, units={"c": 0.01}), t)
        pacer.tick(t, 1.0)

    for i in range(30):
        report(t0 + i, 50 * 0.002)
    rp = pacer.campaigns["c"].regions["us-east"]
    assert rp.throttle == pytest.approx(0.1 / (200 * 0.002), rel=0.1)  # 0.25
    pacer.put_flight(Flight("c", 6.0, t0 + 30, t0 + 1230, curve="even"))  # 0.005 a second, from t0 + 30
    report(t0 + 29.5, 0.0)
    assert rp.throttle == pytest.approx(0.005 / (200 * 0.002), rel=0.15)  # 0.0125


def test_older_replicas_and_state_documents_still_work():
    """A replica that does not count throttled candidates gets them expected from its throttle;
    a state document from before this version (a field since dropped, new ones missing) loads."""
    t0 = 1_000_000.0
    pacer = Pacer(PacingSettings(), {"us-east": 1.0}, clock=lambda: t0)
    pacer.put_flight(Flight("c", 60.0, t0, t0 + 600, curve="even"))
    pacer.campaigns["c"].region("us-east", 0.2).throttle = 0.25
    pacer.absorb(Report(region="us-east", replica="r1", ts=t0, opportunities={"c": 200}, blocked={"c": 40}), t0)
    rp = pacer.campaigns["c"].regions["us-east"]
    assert rp.throttled_tick == pytest.approx(160 * 0.75)
    doc = pacer.to_dict()
    for r in doc["campaigns"]["c"]["regions"].values():
        r["err_prev"] = 0.3  # the PI's state, before the throttle was set forward
        del r["spend_w"], r["unit"]
    del doc["replicas"]["r1"]["throttled"]
    again = Pacer(PacingSettings(), {"us-east": 1.0}, clock=lambda: t0)
    again.load(doc)
    assert again.campaigns["c"].regions["us-east"].throttle == 0.25
    assert again.replicas["r1"].throttled == {}


def test_control_out_of_reach_lets_leases_run_out():
    """No syncs for longer than a lease lives: every replica stops spending."""
    clock = Clock()
    control = _control(clock)

    async def go():
        await control.start()
        loop = Loop(clock, control, n=10)
        await loop.setup()
        await loop.run(loop.start + 60)
        spend_at_cut = dict(loop.true_spend)
        # Control gone: the market goes on, nobody renews.
        for _ in range(int((control.settings.lease_ttl_s + 1) / 0.1)):
            loop.step(0.1)
            clock.t += 0.1
        after_ttl = dict(loop.true_spend)
        for _ in range(300):
            loop.step(0.1)
            clock.t += 0.1
        return loop, spend_at_cut, after_ttl

    loop, cut, after_ttl = asyncio.run(go())
    # Spending after the leases ran out: only notices for bids made before (none new).
    late = sum(loop.true_spend.values()) - sum(after_ttl.values())
    assert late <= 0.01 * sum(cut.values())
    assert all(b.allow(SimpleNamespace(id=c.id), 0.0001, clock.t) is False
               for b in loop.budgets.values() for c in loop.campaigns)


def test_control_restart_resumes_from_redis(redis_srv):
    """Control killed mid-flight: a new one loads the state from Redis, and the flight ends on
    budget with no spend outside the lease bound."""
    import redis.asyncio as aioredis

    clock = Clock()

    async def go():
        r1 = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
        control = _control(clock, r1)
        await control.start()
        loop = Loop(clock, control, n=20, day_s=200.0, seed=5)
        await loop.setup()
        await loop.run(loop.start + 80)
        spent_before = {cid: cp.spent for cid, cp in control.pacer.campaigns.items()}
        epoch_before = control.epoch
        # The actor dies: 3 s without syncs (leases still live), then a new incarnation.
        for _ in range(30):
            loop.step(0.1)
            clock.t += 0.1
        r2 = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
        fresh = _control(clock, r2)
        await fresh.start()
        assert fresh.epoch > epoch_before
        assert {cid: cp.spent for cid, cp in fresh.pacer.campaigns.items()} == pytest.approx(spent_before)
        # Every lease comes back, the renewing replicas' held at least until the quiet period's
        # end, and the stand-in allowance the saved state announced is held back beside them
        # (fleet.control.standin).
        phantoms = {k for k in fresh.pacer.leases if PHANTOM in k}
        assert phantoms and set(fresh.pacer.leases) - phantoms == set(control.pacer.leases)
        for k, old in control.pacer.leases.items():
            new = fresh.pacer.leases[k]
            assert (new.id, new.amount, new.used) == (old.id, old.amount, old.used)
            assert old.expires_at <= new.expires_at <= fresh.quiet_until
        # The throttle's estimates (opportunity rates, spend per participation) come back whole.
        doc, was = fresh.pacer.to_dict(), control.pacer.to_dict()
        assert {k: v for k, v in doc.items() if k not in ("leases", "prior")} == \
            {k: v for k, v in was.items() if k not in ("leases", "prior")}
        loop.control = fresh
        await loop.run(loop.start + loop.day_s + 15)
        return loop

    loop = asyncio.run(go())
    rep = loop.report()
    assert loop.bound_violations == 0
    off = {cid: round(x, 4) for cid, x in rep["finals"].items() if abs(x - 1.0) > 0.02}
    assert not off, off


def test_api_writes_are_idempotent_and_validated(redis_srv):
    import redis.asyncio as aioredis

    clock = Clock()

    async def go():
        control = _control(clock, aioredis.Redis.from_url(redis_srv.url, decode_responses=True))
        await control.start()
        body = b'{"budget": 100, "start": 1000001, "end": 1000301, "curve": "even"}'
        s1, b1 = await route(control, "PUT", "/v1/campaigns/cx", body=body, idem="k1")
        s2, b2 = await route(control, "PUT", "/v1/campaigns/cx", body=body, idem="k1")
        s3, _ = await route(control, "PUT", "/v1/campaigns/cx", body=b'{"budget": 5}', idem="k1")
        bad = await route(control, "PUT", "/v1/campaigns/cy", body=b'{"budget": 5, "colour": 1}')
        neg = await route(control, "PUT", "/v1/campaigns/cy", body=b'{"budget": -5}')
        garbage = await route(control, "PUT", "/v1/campaigns/cy", body=b'{not json')
        pol = await route(control, "PUT", "/v1/policies/remnant", body=b'{"budgets": {"pricing": 2.0}}')
        missing = await route(control, "GET", "/v1/campaigns/nope")
        return (s1, b1, s2, b2, s3, bad, neg, garbage, pol, missing)

    s1, b1, s2, b2, s3, bad, neg, garbage, pol, missing = asyncio.run(go())
    assert (s1, s2) == (200, 200) and b1 == b2 and b1["budget"] == 100
    assert s3 == 422
    assert bad[0] == 400 and "colour" in bad[1]["error"]
    assert neg[0] == 400 and garbage[0] == 400 and pol[0] == 400
    assert missing[0] == 404


def test_ledger_drift_compares_pacing_spend_with_the_ledger(redis_srv):
    """Control reads the ledger's finalized spend for the UTC day from Redis (billing truth) and
    reports how far the replicas' reported spend for today's daily flights is from it."""
    import redis.asyncio as aioredis

    from fleet.ledger.consumer import ledger_prefix

    clock = Clock(86_400.0 * 20_000 + 3_600)

    async def go():
        r = aioredis.Redis.from_url(redis_srv.url, decode_responses=True)
        control = _control(clock, r)
        control.catalog = [SimpleNamespace(id="cd", budget_daily=1000.0)]
        await control.start()
        rep = Report(region="us-east", replica="x1", ts=clock.t, spend={"cd": 2.0})
        await control.sync(rep)  # first report: the baseline for this replica (a new one counts from 0)
        assert control.pacer.campaigns["cd"].by_region["us-east"] == 2.0
        await r.hset(f"{ledger_prefix('us-east')}spend:{int(clock.t // 86_400)}", mapping={"cd": 1.6})
        await control.tick(1.0)
        return control.drift["us-east"], control.dashboard()["regions"]["us-east"]["ledger_drift"]

    drift, shown = asyncio.run(go())
    assert drift["pacing"] == 2.0 and drift["ledger"] == 1.6
    assert drift["drift"] == pytest.approx(0.25) and shown == pytest.approx(0.25)


# -- which version prices: serve_config's declaration against control's promotion ---------------

async def _sync(clock, control, region, replica, model, candidate=None, versions=None):
    return await control.sync(Report(region=region, replica=replica, ts=clock(), model=model,
                                     candidate=candidate, versions=versions or {}))


async def _promote_v2(clock, control) -> None:
    """Every region declares ctr/v1 with candidate ctr/v2; the canary runs one step and promotes."""
    from fleet.control.rollout import VersionStats

    await control.start()
    control.set_thresholds({"steps": [0.5], "dwell_s": 1.0, "min_priced": 10})
    for region in control.config.regions:
        await _sync(clock, control, region, f"{region}-a", "ctr/v1", "ctr/v2")
    (ro,) = control.rollouts.values()
    assert (ro.version, ro.baseline) == ("ctr/v2", "ctr/v1")
    during = control.assignment()
    assert during.version_for("us-east", "ctr/v9") == "ctr/v1"  # a canary's baseline holds everywhere
    figs = VersionStats(priced=50, bids=25, value=60.0, price=50.0).to_dict()
    clock.t += 2.0
    await _sync(clock, control, "us-east", "us-east-a", "ctr/v1", "ctr/v2", {"ctr/v1": figs, "ctr/v2": figs})
    await control.tick(1.0)
    assert ro.state == "promoted", ro.history


def test_a_promotion_stands_over_the_declaration_it_superseded_until_a_region_deploys_another():
    """After a promotion, a region whose serve_config still names the old version prices with
    the promoted one; once every live replica of a region names another version (a later
    ``serve deploy``), that newer decision prices there and the other regions keep the promoted
    version; with no region left under it, control holds no version of its own."""
    asyncio.run(_declarations_after_a_promotion())


async def _declarations_after_a_promotion():
    clock = Clock()
    control = Control(load_regions(), None, clock=clock)
    await _promote_v2(clock, control)
    regions = list(control.config.regions)
    a = control.assignment()
    assert a.current == "ctr/v2" and a.over == {r: "ctr/v1" for r in regions}
    assert all(a.version_for(r, "ctr/v1") == "ctr/v2" for r in regions)

    # us-east is deployed again naming ctr/v3; its second replica is not reconfigured yet.
    clock.t += 1.0
    await _sync(clock, control, "us-east", "us-east-b", "ctr/v1", "ctr/v2")
    epoch = control.epoch
    await _sync(clock, control, "us-east", "us-east-a", "ctr/v3")
    a = control.assignment()
    assert "us-east" in a.over and a.version_for("us-east", "ctr/v1") == "ctr/v2"  # no step back to v1
    assert a.version_for("us-east", "ctr/v3") == "ctr/v3"  # the redeployed replica prices v3 already
    await _sync(clock, control, "us-east", "us-east-b", "ctr/v3")
    a = control.assignment()
    assert "us-east" not in a.over and control.epoch > epoch  # pushed to the regions at once
    assert a.version_for("us-east", "ctr/v1") == "ctr/v1"  # a later deploy back to v1 is honoured too
    assert all(a.version_for(r, "ctr/v1") == "ctr/v2" for r in regions if r != "us-east")
    # A replica gone quiet (stopped in the deploy) does not hold its region under the promotion.
    await _sync(clock, control, "eu-west", "eu-west-b", "ctr/v1")
    clock.t += 10 * control.health.stale_s
    for region in regions:
        if region != "us-east":
            await _sync(clock, control, region, f"{region}-a", "ctr/v2")
    assert control.current is None and control.over is None
    assert control.assignment().version_for("eu-west", "ctr/v2") == "ctr/v2"
    # A canary's baseline prices everywhere: with regions on v2 and v3 no candidate is started
    # (nor with nothing declared), and syncs go on; once they agree, it is judged against v3.
    await _sync(clock, control, "us-east", "us-east-a", "ctr/v3", "ctr/v4")
    await _sync(clock, control, "eu-west", "eu-west-a", None, "ctr/v4")
    assert not any(r.active for r in control.rollouts.values())
    for region in regions:
        await _sync(clock, control, region, f"{region}-a", "ctr/v3")
    await _sync(clock, control, "us-east", "us-east-a", "ctr/v3", "ctr/v4")
    ro = next(r for r in control.rollouts.values() if r.active)
    assert (ro.version, ro.baseline) == ("ctr/v4", "ctr/v3")


def test_a_deploy_under_way_at_the_promotion_is_not_taken_for_the_declaration_it_replaces():
    """us-east's replica a already runs a new config (v3) when v2 is promoted, b still names v1,
    and a reported last: the promotion stands over v1, the older declaration, so a prices v3 and
    b v2, and once b names v3 too the region is released. A region silent at the promotion
    keeps its last known declaration rather than being taken for the baseline."""
    from fleet.control.rollout import VersionStats

    async def go():
        clock = Clock()
        control = Control(load_regions(), None, clock=clock)
        await control.start()
        control.set_thresholds({"steps": [0.5], "dwell_s": 1.0, "min_priced": 10})
        await _sync(clock, control, "ap-southeast", "ap-southeast-a", "ctr/v0")
        clock.t += 3 * control.health.stale_s  # ap-southeast goes quiet, still naming v0
        await _sync(clock, control, "us-east", "us-east-b", "ctr/v1", "ctr/v2")
        await _sync(clock, control, "eu-west", "eu-west-a", "ctr/v1", "ctr/v2")
        clock.t += 1.0
        await _sync(clock, control, "us-east", "us-east-a", "ctr/v3")  # deployed already
        figs = VersionStats(priced=50, bids=25, value=60.0, price=50.0).to_dict()
        clock.t += 2.0
        await _sync(clock, control, "us-east", "us-east-b", "ctr/v1", "ctr/v2", {"ctr/v1": figs, "ctr/v2": figs})
        await _sync(clock, control, "eu-west", "eu-west-a", "ctr/v1", "ctr/v2")
        await _sync(clock, control, "us-east", "us-east-a", "ctr/v3")  # the last to report
        await control.tick(1.0)
        assert control.current == "ctr/v2"
        return control

    control = asyncio.run(go())
    a = control.assignment()
    assert a.over["us-east"] == "ctr/v1" and a.over["ap-southeast"] == "ctr/v0"
    assert a.version_for("us-east", "ctr/v3") == "ctr/v3" and a.version_for("us-east", "ctr/v1") == "ctr/v2"


def test_state_saved_before_over_holds_the_promotion_over_its_baseline_only():
    clock = Clock()
    control = Control(load_regions(), None, clock=clock)
    asyncio.run(_promote_v2(clock, control))
    doc = json.loads(json.dumps(control.to_dict()))
    del doc["over"], doc["declared"]
    again = Control(load_regions(), None, clock=clock)
    again.load(doc)
    a = again.assignment()
    assert a.current == "ctr/v2" and set(a.over.values()) == {"ctr/v1"}
    assert a.version_for("eu-west", "ctr/v3") == "ctr/v3"


def test_the_promotions_standing_survives_a_control_restart(redis_srv):
    """``over`` and the replicas' declarations are part of control's saved state: a restarted
    control still holds the stale regions under the promoted version."""
    import redis.asyncio as aioredis

    async def go():
        clock = Clock()
        r = aioredis.from_url(redis_srv.url)
        await r.flushdb()
        control = Control(load_regions(), r, clock=clock)
        await _promote_v2(clock, control)
        await _sync(clock, control, "us-east", "us-east-a", "ctr/v3")  # saved on sync
        again = Control(load_regions(), aioredis.from_url(redis_srv.url), clock=clock)
        await again.start()
        return again

    again = asyncio.run(go())
    a = again.assignment()
    assert a.current == "ctr/v2" and "us-east" not in a.over and a.over["eu-west"] == "ctr/v1"
    assert again.declared["us-east"]["us-east-a"][0] == "ctr/v3"


def test_an_assignment_from_before_over_holds_for_every_region():
    """A push from a control without ``over`` (or a canary's baseline) applies everywhere; with no
    current version the declaration prices."""
    from fleet.control.messages import ModelAssignment, decode_push, encode, Push

    old = decode_push(b'{"epoch": 3, "ts": 0, "model": {"current": "ctr/v2"}}').model
    assert old.over is None and old.version_for("us-east", "ctr/v7") == "ctr/v2"
    assert ModelAssignment().version_for("us-east", "ctr/v7") == "ctr/v7"
    both = ModelAssignment(current="ctr/v2", over={"us-east": None})
    assert both.version_for("us-east", None) == "ctr/v2" and both.version_for("us-east", "ctr/v1") == "ctr/v1"
    assert decode_push(encode(Push(epoch=1, ts=0, model=both))).model == both
