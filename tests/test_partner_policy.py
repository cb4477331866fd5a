"""Demand partners' cutoffs and shares from control (``fleet.control.partner_policy``): the rule
on its own, then through ``Control`` (reports in, pushes out, pins through the API, restarts)."""

from __future__ import annotations

import asyncio
import itertools
import json

import msgspec
import pytest

from fleet.config import load_regions
from fleet.control.api import route
from fleet.control.messages import Report
from fleet.control.partner_policy import PartnerBook
from fleet.control.partner_rule import Backoff, Params, Window, decide
from fleet.control.service import Control
from fleet.harness.pacing_loop import Clock
from fleet.partners.messages import PartnerTierStats, partner_policy_from_tiers

TIERS = ["premium", "standard", "remnant"]


def stats(called=100, *, p95=10.0, cutoff=80.0, late=0, errors=0, part=None, won=0, value=0.0):
    part = called // 2 if part is None else part
    return PartnerTierStats(eligible=called, called=called, in_time=called - late - errors, late=late,
                            errors=errors, participating=part, won=won, p95_ms=p95, value_won=value,
                            cutoff_ms=cutoff)


_replicas = itertools.count(1)


def judged(book: PartnerBook, reports: dict, now=1000.0, region="us-east"):
    """``reports`` as a new replica's totals (reports are cumulative per replica): exactly these
    figures join the windows."""
    book.absorb(region, f"r{next(_replicas)}", reports, now)
    return book.recompute(TIERS, now)


def test_a_slow_partner_that_rarely_wins_gets_less_time_on_remnant():
    book = PartnerBook()
    pol = judged(book, {
        "fast": {t: stats(p95=10.0, won=30, value=90.0) for t in TIERS},
        "slow": {t: stats(p95=60.0, won=1, value=1.0) for t in TIERS},
    })
    slow, fast = pol["slow"], pol["fast"]
    # Remnant: the slow partner gets half its 80 ms ceiling, however much it would need.
    assert slow["remnant"].cutoff_ms == 40.0
    assert slow["standard"].cutoff_ms == 60.0  # three quarters on the middle tier
    assert slow["premium"].cutoff_ms == 75.0  # premium: what it needs (60 x 1.25), within its ceiling
    assert slow["remnant"].cutoff_ms < slow["standard"].cutoff_ms < slow["premium"].cutoff_ms
    # The fast one is given what it needs on the poorer tiers (10 x 1.25, rounded up)...
    assert fast["remnant"].cutoff_ms == fast["standard"].cutoff_ms == 13.0
    # ...and keeps its whole ceiling on premium, whose competition it defines.
    assert fast["premium"].cutoff_ms == 80.0
    assert all(c.share == 1.0 and not c.pinned for ts in pol.values() for c in ts.values())


def test_a_slow_partner_that_defines_a_tier_keeps_the_time_it_needs_there():
    book = PartnerBook()
    pol = judged(book, {"slow": {"remnant": stats(p95=60.0, won=20, value=50.0)},
                        "fast": {"remnant": stats(p95=10.0, won=20, value=50.0)}})
    assert pol["slow"]["remnant"].cutoff_ms == 75.0  # defines remnant: not cut to 40


def test_premium_keeps_time_for_its_defining_partners_and_only_for_them():
    book = PartnerBook()
    pol = judged(book, {"a": {"premium": stats(p95=8.0, won=10, value=60.0)},
                        "b": {"premium": stats(p95=8.0, won=10, value=35.0)},
                        "c": {"premium": stats(p95=8.0, won=1, value=5.0)}})
    assert pol["a"]["premium"].cutoff_ms == pol["b"]["premium"].cutoff_ms == 80.0
    assert pol["c"]["premium"].cutoff_ms == 10.0  # 5% of the value: what it needs, no more


def test_a_partner_past_its_cutoff_is_throttled_to_a_probe_and_backed_off():
    p = Params()
    w = Window(called=100, late=20, p95_ms=40.0, cutoff_ms=40.0)
    c, bo, why = decide(w, ceiling_ms=80.0, rank=0, tiers=3, defining=False, prev=None, backoff=Backoff(),
                        now=1000.0, p=p)
    assert c.share == pytest.approx(0.1) and "late" in why
    assert bo.level == 1 and bo.until == 1000.0 + p.backoff_s
    assert c.cutoff_ms == 50.0  # its true p95 is unknown (late counts at the cutoff): more time, within the ceiling
    clean = Window(called=100, p95_ms=20.0, cutoff_ms=50.0)
    c2, bo2, why2 = decide(clean, ceiling_ms=80.0, rank=0, tiers=3, defining=False, prev=c, backoff=bo,
                           now=1010.0, p=p)
    assert c2.share == pytest.approx(0.1) and why2.startswith("backing off")  # the backoff has not run out
    c3, bo3, _ = decide(clean, ceiling_ms=80.0, rank=0, tiers=3, defining=False, prev=c2, backoff=bo2,
                        now=1000.0 + p.backoff_s + 1, p=p)
    assert c3.share == 1.0 and bo3.level == 1  # a clean window after it: the share comes back
    # its failed trials are kept until it has been clean for forgive_s, then forgotten
    _, bo4, _ = decide(clean, ceiling_ms=80.0, rank=0, tiers=3, defining=False, prev=c3, backoff=bo3,
                       now=bo3.until + p.forgive_s - 1, p=p)
    assert bo4.level == 1
    _, bo5, _ = decide(clean, ceiling_ms=80.0, rank=0, tiers=3, defining=False, prev=c3, backoff=bo4,
                       now=bo3.until + p.forgive_s, p=p)
    assert bo5 == Backoff()


def test_errors_throttle_and_the_backoff_doubles_up_to_its_cap():
    p = Params()
    bo, now, waits = Backoff(), 0.0, []
    for _ in range(7):
        c, bo, why = decide(Window(called=100, errors=30, p95_ms=5.0, cutoff_ms=80.0), ceiling_ms=80.0, rank=2,
                            tiers=3, defining=False, prev=None, backoff=bo, now=now, p=p)
        assert c.share == pytest.approx(p.probe_share) and why.startswith("errors")
        waits.append(bo.until - now)
        now = bo.until + 1
    assert waits == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]


def test_pinned_entries_are_never_changed_by_the_computation():
    book = PartnerBook()
    judged(book, {"slow": {t: stats(p95=60.0) for t in TIERS}})  # the regions' default: 80 ms
    book.pin("slow", "remnant", {"cutoff_ms": 95.0, "share": 0.5})
    book.pin("slow", "premium", {"cutoff_ms": 0})  # 0: do not call
    for i, s in enumerate([stats(p95=60.0), stats(p95=79.0, late=50), stats(p95=5.0, errors=90),
                           stats(p95=1.0, won=99, value=1e6)]):
        ts = {t: s for t in TIERS} | {"remnant": stats(p95=s.p95_ms, late=s.late, errors=s.errors, won=s.won,
                                                       value=s.value_won, cutoff=95.0)}  # what the pin makes them use
        pol = judged(book, {"slow": ts, "other": {t: stats(won=5, value=5.0) for t in TIERS}}, now=1000.0 + 100 * i)
        assert (pol["slow"]["remnant"].cutoff_ms, pol["slow"]["remnant"].share, pol["slow"]["remnant"].pinned) == (95.0, 0.5, True)
        assert (pol["slow"]["premium"].cutoff_ms, pol["slow"]["premium"].pinned) == (0.0, True)
        assert not pol["slow"]["standard"].pinned  # the unpinned tier is computed
    # A pinned cutoff reported back by the regions never becomes the partner's ceiling.
    assert book.ceilings["slow"]["remnant"] == 80.0
    tiers = book.overlay({t: {"budgets": {"pricing": 0.3}} for t in TIERS})
    assert partner_policy_from_tiers(tiers)["slow"]["remnant"].pinned
    assert book.unpin("slow", "remnant") and "slow" not in book.overlay(tiers)["remnant"].get("partners", {})


def test_thin_windows_accumulate_until_they_can_be_judged():
    book = PartnerBook(Params(min_calls=30))
    assert judged(book, {"p": {"remnant": stats(called=10, p95=20.0)}}) == {}
    assert book.pending()
    pol = judged(book, {"p": {"remnant": stats(called=25, p95=20.0)}})  # 35 calls now
    assert pol["p"]["remnant"].cutoff_ms == 25.0 and not book.pending()


def test_the_ceiling_stays_the_default_when_control_has_tightened_the_cutoff():
    book = PartnerBook()
    judged(book, {"p": {"remnant": stats(p95=10.0, won=5, value=5.0)}})
    judged(book, {"p": {"remnant": stats(p95=10.0, cutoff=13.0, won=5, value=5.0)}})  # the region now uses 13
    assert book.ceilings["p"]["remnant"] == 80.0
    pol = judged(book, {"p": {"remnant": stats(p95=70.0, cutoff=13.0, late=60, won=5, value=5.0)}})
    assert pol["p"]["remnant"].cutoff_ms <= 80.0 and pol["p"]["remnant"].share == pytest.approx(0.1)


def test_small_moves_of_a_p95_leave_the_cutoff_alone():
    book = PartnerBook()
    a = judged(book, {"p": {"remnant": stats(p95=20.0, won=5, value=5.0)}})["p"]["remnant"].cutoff_ms
    b = judged(book, {"p": {"remnant": stats(p95=21.0, won=5, value=5.0)}})["p"]["remnant"].cutoff_ms
    assert a == b == 25.0


# -- through control -----------------------------------------------------------------------------


def _report(region, partners, replica=None):
    """A report; without ``replica``, a new replica's (its totals are exactly ``partners``)."""
    return Report(region=region, replica=replica or f"r{next(_replicas)}", ts=0.0, partners=partners)


def test_control_pushes_computed_and_pinned_partner_policies_by_epoch_and_keeps_pins():
    clock = Clock()
    control = Control(load_regions(), None, clock=clock)

    async def go():
        await control.start()
        slow = {t: stats(p95=60.0, won=1, value=1.0) for t in TIERS}
        fast = {t: stats(p95=10.0, won=30, value=90.0) for t in TIERS}
        await control.sync(_report("us-east", {"slow": slow, "fast": fast}))
        e0 = control.policies.epoch
        clock.t += control.settings.policy_every_s + 1
        await control.tick(1.0)
        assert control.policies.epoch == e0 + 1
        push = await control.sync(_report("eu-west", {}))
        got = partner_policy_from_tiers(push.policy)
        assert got["slow"]["remnant"].cutoff_ms == 40.0 and got["fast"]["premium"].cutoff_ms == 80.0
        assert push.policy["remnant"]["budgets"]  # the stage budgets travel as before
        # An operator pins the slow partner on remnant: pushed at once, by a new epoch.
        status, out = await route(control, "PUT", "/v1/partners/slow/remnant", body=b'{"cutoff_ms": 65, "share": 0.3}',
                                  idem="pin-1")
        assert status == 200 and out["policy_epoch"] == e0 + 2, out
        watched = await control.watch(0, 0.0)
        pinned = partner_policy_from_tiers(watched.policy)["slow"]["remnant"]
        assert (pinned.cutoff_ms, pinned.share, pinned.pinned) == (65.0, 0.3, True)
        # Recomputes over very different figures never touch it; an operator's tier PUT neither.
        for s in (stats(p95=70.0, late=80), stats(p95=2.0, won=90, value=900.0)):
            await control.sync(_report("us-east", {"slow": {t: s for t in TIERS}}))
            clock.t += control.settings.policy_every_s + 1
            await control.tick(1.0)
            again = partner_policy_from_tiers(control.policies.policies)["slow"]["remnant"]
            assert (again.cutoff_ms, again.share, again.pinned) == (65.0, 0.3, True)
        status, _ = await route(control, "PUT", "/v1/policies/remnant",
                                body=json.dumps({"budgets": control.base_policies["remnant"]["budgets"]}).encode())
        assert status == 200 and partner_policy_from_tiers(control.policies.policies)["slow"]["remnant"].pinned
        # Bad pins are a 400 and change nothing; an unknown tier a 404.
        before = control.policies.epoch
        for body in (b'{"cutoff_ms": -1}', b'{"cutoff_ms": 10, "share": 2}', b'{"cutoff": 10}', b'[1]', b'{"cutoff_ms": "x"}'):
            assert (await route(control, "PUT", "/v1/partners/slow/remnant", body=body))[0] == 400, body
        assert (await route(control, "PUT", "/v1/partners/slow/gold", body=b'{"cutoff_ms": 10}'))[0] == 404
        assert control.policies.epoch == before
        status, view = await route(control, "GET", "/v1/partners")
        assert status == 200 and view["pins"]["slow"]["remnant"]["cutoff_ms"] == 65.0
        assert view["regions"]["us-east"]["slow"]["called"] == 900
        # Unpinned: the computation takes it back at the next recompute.
        assert (await route(control, "DELETE", "/v1/partners/slow/remnant", idem="unpin-1"))[0] == 200
        assert "slow" not in control.policies.policies["remnant"].get("partners", {})
        await control.sync(_report("us-east", {"slow": {"remnant": stats(p95=60.0, won=1, value=1.0)},
                                               "fast": {"remnant": stats(p95=10.0, won=30, value=90.0)}}))
        clock.t += control.settings.policy_every_s + 1
        await control.tick(1.0)
        back = partner_policy_from_tiers(control.policies.policies)["slow"]["remnant"]
        assert not back.pinned and back.cutoff_ms == 40.0

    asyncio.run(go())


def test_partner_state_survives_a_control_restart(redis_srv):
    import redis.asyncio as aredis

    clock = Clock()

    async def go():
        r = aredis.Redis.from_url(redis_srv.url)
        c1 = Control(load_regions(), r, clock=clock)
        await c1.start()
        await c1.sync(_report("us-east", {"p": {"remnant": stats(p95=60.0)}, "q": {"remnant": stats(won=9, value=9.0)}}))
        await route(c1, "PUT", "/v1/partners/p/premium", body=b'{"cutoff_ms": 33}', idem="k1")
        clock.t += c1.settings.policy_every_s + 1
        await c1.tick(1.0)
        c2 = Control(load_regions(), r, clock=clock)
        await c2.start()
        assert c2.partners.to_dict() == c1.partners.to_dict()
        assert c2.policies.policies == c1.policies.policies
        assert partner_policy_from_tiers(c2.policies.policies)["p"]["premium"].pinned
        await r.aclose()

    asyncio.run(go())


# -- seed 001, failure chain 1: partners late together --------------------------------------------


def test_partners_late_together_are_not_throttled_and_their_tier_cuts_optional_enrichment():
    from fleet.control.cutoffs import recompute

    book = PartnerBook()
    judged(book, {p: {"premium": stats(p95=p95, won=10, value=10.0)} for p, p95 in (("a", 8.0), ("b", 15.0), ("c", 30.0))})
    before = {p: book.policy[p]["premium"] for p in "abc"}
    # Enrichment slowed: the fan-out starts later and all three arrive late, the fast one too.
    pol = judged(book, {p: {"premium": stats(p95=c.cutoff_ms, cutoff=c.cutoff_ms, late=25, won=10, value=10.0)}
                        for p, c in before.items()}, now=2000.0)
    for p in "abc":
        assert pol[p]["premium"] == before[p], p  # neither throttled nor re-timed
        assert "upstream" in book.why[p]["premium"]
    assert book.cut_tiers(2000.0) == {"premium"} and book.cut_tiers(2000.0 + Params().starve_hold_s) == set()
    base = {name: t.model_dump() for name, t in load_regions().tiers.items()}
    new = recompute(base, {"enrichment": 30.0}, {t: 85.0 for t in base}, cut=book.cut_tiers(2000.0))
    assert new["premium"]["budgets"]["enrichment"] == pytest.approx(0.02)  # the floor share: optional, cut
    assert new["standard"]["budgets"]["enrichment"] > base["standard"]["budgets"]["enrichment"]  # not cut: fed as before
    assert sum(new["premium"]["budgets"].values()) < sum(base["premium"]["budgets"].values())  # given to no stage


def test_one_late_partner_among_punctual_ones_is_its_own_problem():
    book = PartnerBook()
    pol = judged(book, {"a": {"remnant": stats(p95=8.0)}, "b": {"remnant": stats(p95=9.0)},
                        "c": {"remnant": stats(p95=80.0, late=30)}})
    assert pol["c"]["remnant"].share == pytest.approx(0.1) and pol["a"]["remnant"].share == 1.0
    assert book.cut_tiers(1000.0) == set()


def test_control_cuts_enrichment_where_partners_starve_and_never_feeds_it_there():
    clock = Clock()
    control = Control(load_regions(), None, clock=clock)
    base_share = control.base_policies["premium"]["budgets"]["enrichment"]

    async def interval(late: int, p95: float):
        partners = {p: {"premium": stats(p95=p95, cutoff=40.0, late=late, won=5, value=5.0)} for p in ("a", "b", "c")}
        await control.sync(Report(region="us-east", replica=f"r{next(_replicas)}", ts=clock(), partners=partners,
                                  stage_p99_ms={"enrichment": 14.0}))
        clock.t += control.settings.policy_every_s + 1
        await control.tick(1.0)
        return control.policies.policies["premium"]

    async def go():
        await control.start()
        healthy = await interval(0, 10.0)
        # A slower enrichment is not fed where partners are called (the time would be theirs)...
        assert healthy["budgets"]["enrichment"] == pytest.approx(base_share)
        standard = control.policies.policies["standard"]["budgets"]["enrichment"]
        assert standard > control.base_policies["standard"]["budgets"]["enrichment"]  # ...and is where none are
        starved = await interval(30, 40.0)
        assert starved["budgets"]["enrichment"] == pytest.approx(0.02)
        assert all(c.share == 1.0 for c in partner_policy_from_tiers(control.policies.policies)
                   .values() for c in [c["premium"]])
        clock.t += Params().starve_hold_s
        back = await interval(0, 10.0)
        assert back["budgets"]["enrichment"] == pytest.approx(base_share)  # the cut is over

    asyncio.run(go())


def test_partners_late_at_different_ticks_are_still_late_together():
    """Windows fill at their own pace (a throttled partner's slowly), so partners late for one
    cause are judged at different ticks: the first, judged late alone, is throttled; when the
    second follows within the window the tier is starved and the first gets its share back."""
    book = PartnerBook()
    judged(book, {p: {"premium": stats(p95=20.0, won=5, value=5.0)} for p in "abc"})  # three partners, healthy
    first = judged(book, {"a": {"premium": stats(p95=80.0, late=20, won=5, value=5.0)}}, now=1030.0)
    assert first["a"]["premium"].share == pytest.approx(0.1) and book.cut_tiers(1030.0) == set()
    second = judged(book, {"b": {"premium": stats(p95=80.0, late=20, won=5, value=5.0)}}, now=1060.0)
    assert second["a"]["premium"].share == 1.0 and second["b"]["premium"].share == 1.0
    assert book.backoffs["a"]["premium"].level == 0 and book.cut_tiers(1060.0) == {"premium"}
    assert second["c"]["premium"].share == 1.0
    # Later: an erring partner on a starved tier stays backed off (errors are its own).
    third = judged(book, {"c": {"premium": stats(p95=80.0, late=20, errors=30, won=5, value=5.0)}}, now=1090.0)
    assert third["c"]["premium"].share == pytest.approx(0.1)


# -- reports are cumulative per replica: one sent again counts once -----------------------------


def test_a_report_sent_again_is_counted_once_and_growth_is_counted():
    book = PartnerBook()
    first = {"p": {"remnant": stats(called=40, won=2, value=3.0)}}
    book.absorb("us-east", "r1", first, 10.0)
    book.absorb("us-east", "r1", first, 11.0)  # the same report again (a retry, a lost answer)
    row = book.regions["us-east"]["p"]
    assert (row["called"], row["won"], row["value_won"]) == (40, 2, 3.0)
    assert book.windows["p"]["remnant"].called == 40
    book.absorb("us-east", "r1", {"p": {"remnant": stats(called=70, won=3, value=4.5)}}, 12.0)  # grown by 30
    assert (row["called"], row["won"], row["value_won"]) == (70, 3, 4.5)
    book.absorb("us-east", "r2", first, 12.0)  # another replica of the region: its own totals
    assert row["called"] == 110 and book.windows["p"]["remnant"].called == 110
    book.absorb("us-east", "r1", {"p": {"remnant": stats(called=5)}}, 13.0)  # r1 restarted from zero
    book.absorb("us-east", "r1", {"p": {"remnant": stats(called=9)}}, 14.0)
    assert row["called"] == 114  # counted from its new totals on, nothing taken back
    book.absorb("eu-west", "r1", first, 15.0)  # another region's replica of the same name: its own
    assert book.regions["eu-west"]["p"]["called"] == 40 and row["called"] == 114


def test_the_dashboard_counts_a_resent_report_once_even_across_a_control_restart(redis_srv):
    import redis.asyncio as aredis

    clock = Clock()
    rep = Report(region="us-east", replica="r1", ts=0.0, partners={"p": {"remnant": stats(called=50)}})

    async def go():
        r = aredis.Redis.from_url(redis_srv.url)
        c1 = Control(load_regions(), r, clock=clock)
        await c1.start()
        await c1.sync(rep)
        await c1.sync(rep)
        assert c1.dashboard()["regions"]["us-east"]["partners"]["p"]["called"] == 50
        c2 = Control(load_regions(), r, clock=clock)
        await c2.start()
        await c2.sync(rep)  # the replica's retry reaches the restarted control
        assert c2.dashboard()["regions"]["us-east"]["partners"]["p"]["called"] == 50
        await r.aclose()

    asyncio.run(go())


# -- the backoff as a circuit breaker: open, half-open trial, closed ----------------------------


def ticks(book: PartnerBook, reports_by_tick: list[tuple[float, list[dict]]]) -> list[dict]:
    """Control's loop on a fake clock: each tick's reports arrive one by one (a new replica's
    totals each, so exactly these figures join the windows) from 25 s before the tick, then the
    tick judges; the policy after each tick."""
    out = []
    for t, reports in reports_by_tick:
        for i, r in enumerate(reports):
            book.absorb("us-east", f"r{next(_replicas)}", r, t - 25.0 + i)
        out.append(book.recompute(TIERS, t))
    return out


def test_a_hung_partner_that_answers_again_gets_its_whole_share_back_at_the_next_judgement():
    """A hang that ended mid-window: the window is late on a third of its calls, but its latest
    calls were all in time. The old rule doubled the backoff for it (the probe re-measuring the
    known fault) and kept the partner at its probe share for two more intervals."""
    book = PartnerBook()
    hung = {"fast": {"standard": stats(60, p95=30.0, cutoff=30.0, late=40)}}
    healthy = {"fast": {"standard": stats(100, p95=8.0, cutoff=30.0)}}
    pols = ticks(book, [(1000.0, [healthy]), (1030.0, [hung])])
    # one replica's reports through the next interval (cumulative): late calls, then in time again
    for t, total in ((1036.0, stats(20, p95=30.0, cutoff=30.0, late=15)),
                     (1046.0, stats(32, p95=8.0, cutoff=30.0, late=15)),
                     (1056.0, stats(44, p95=8.0, cutoff=30.0, late=15))):
        book.absorb("us-east", "same", {"fast": {"standard": total}}, t)
    pols.append(book.recompute(TIERS, 1060.0))
    assert pols[1]["fast"]["standard"].share == pytest.approx(0.1)  # open: backing off
    assert pols[2]["fast"]["standard"].share == 1.0, book.why["fast"]["standard"]  # closed again, one interval later
    assert "answering again" in book.why["fast"]["standard"]
    assert book.backoffs["fast"]["standard"].until <= 1060.0  # closed (its failed trials kept for forgive_s)


def test_a_clean_tail_from_one_region_does_not_close_a_hang_in_another():
    """Clean tails are per reporting replica: us-east's clean reports arriving after eu-west's late
    ones say nothing of eu-west (review, 2026-12-05: the partner hung in one region only kept
    control's whole share)."""
    book = PartnerBook()
    ticks(book, [(1000.0, [{"fast": {"standard": stats(100, p95=8.0, cutoff=30.0)}}]),
                 (1030.0, [{"fast": {"standard": stats(60, p95=30.0, cutoff=30.0, late=40)}}])])
    book.absorb("eu-west", "eu", {"fast": {"standard": stats(20, p95=30.0, cutoff=30.0, late=15)}}, 1040.0)
    book.absorb("us-east", "us", {"fast": {"standard": stats(12, p95=8.0, cutoff=30.0)}}, 1045.0)
    book.absorb("ap-southeast", "ap", {"fast": {"standard": stats(12, p95=8.0, cutoff=30.0)}}, 1050.0)
    pol = book.recompute(TIERS, 1070.0)
    assert pol["fast"]["standard"].share == pytest.approx(0.1), book.why["fast"]["standard"]


def test_a_flapping_partner_backs_off_longer_each_time_instead_of_starting_over():
    """Slow for a window, fine for the next, again and again: each closing keeps its failed trials,
    so each trouble backs it off longer (review, 2026-12-05: starting over at 30 s each time gave
    it ~6x the late calls of the old rule)."""
    p = Params()
    slow = Window(called=100, late=30, p95_ms=30.0, cutoff_ms=30.0)
    fine = Window(called=100, p95_ms=8.0, cutoff_ms=30.0)
    bo, now, waits, shares = Backoff(), 1000.0, [], []
    for _ in range(6):
        c, bo, _ = decide(slow, ceiling_ms=30.0, rank=1, tiers=3, defining=False, prev=None, backoff=bo, now=now, p=p)
        waits.append(bo.until - now)
        now = bo.until + 1
        c, bo, _ = decide(fine, ceiling_ms=30.0, rank=1, tiers=3, defining=False, prev=None, backoff=bo, now=now, p=p)
        shares.append(c.share)
        now += 1
    assert waits == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0] and shares == [1.0] * 6


def test_the_backoff_level_is_capped_and_never_overflows():
    """An always-erring partner for weeks: the level is capped (it once reached 2**1024 and raised
    OverflowError inside recompute, which stopped every policy change)."""
    p = Params()
    bo = Backoff(level=5000, until=0.0, cause="errors")
    erring = Window(called=100, errors=50, p95_ms=8.0, cutoff_ms=30.0)
    c, bo2, _ = decide(erring, ceiling_ms=30.0, rank=1, tiers=3, defining=False, prev=None, backoff=bo,
                       now=1000.0, p=p)
    assert c.share == pytest.approx(p.probe_share) and bo2.until == 1000.0 + p.max_backoff_s
    assert bo2.level <= 16


def test_trouble_while_backing_off_does_not_lengthen_the_backoff_and_a_clean_trial_closes_it():
    p = Params()
    bo = Backoff(level=1, until=1060.0, cause="late")
    late = Window(called=60, late=30, p95_ms=30.0, cutoff_ms=30.0, opened=1035.0)
    c, bo2, why = decide(late, ceiling_ms=30.0, rank=1, tiers=3, defining=True, prev=None, backoff=bo,
                         now=1050.0, p=p)
    assert c.share == pytest.approx(p.probe_share) and bo2 == bo and why.startswith("backing off (late")
    # Judged after it ran out but begun before: not yet the trial either.
    c, bo3, _ = decide(late, ceiling_ms=30.0, rank=1, tiers=3, defining=True, prev=None, backoff=bo, now=1065.0, p=p)
    assert c.share == pytest.approx(p.probe_share) and bo3 == bo
    clean = Window(called=40, p95_ms=8.0, cutoff_ms=30.0, opened=1062.0)
    c, bo4, _ = decide(clean, ceiling_ms=30.0, rank=1, tiers=3, defining=True, prev=None, backoff=bo, now=1090.0, p=p)
    assert c.share == 1.0 and bo4.until == bo.until and bo4.level == 1  # closed; its trials kept for forgive_s


def test_a_partner_that_stays_slow_stays_throttled_and_its_backoff_doubles_per_failed_trial():
    book = PartnerBook()
    slow = {"slow": {"standard": stats(40, p95=30.0, cutoff=30.0, late=10)}}  # 25% late in every report
    pols = ticks(book, [(1000.0 + 30 * i, [slow, slow]) for i in range(10)])
    assert all(p["slow"]["standard"].share == pytest.approx(0.1) for p in pols)
    bo = book.backoffs["slow"]["standard"]
    # tripped at 1000 (30 s); trials failed at 1060 (60 s) and 1150 (120 s); the next trial at 1300
    assert bo.level == 3 and bo.until == 1150.0 + 120.0


def test_a_slowdown_upstream_is_seen_while_the_late_partners_are_backing_off_for_their_own_lateness():
    """Review, 2026-12-05: counting a partner already backing off for its own lateness only by its
    first judgement let a real slowdown upstream go unseen for good once every late partner was
    backing off (each failed trial doubling the backoff instead). Both late together now make the
    tier starved, and both get their share back."""
    book = PartnerBook()
    late = stats(100, p95=30.0, cutoff=30.0, late=30)
    ok = stats(100, p95=8.0, cutoff=30.0)
    # "a" hangs alone for minutes (its own fault: throttled), then enrichment slows and both are late
    schedule = [(1000.0 + 30 * i, [{"a": {"standard": late}, "b": {"standard": ok}}]) for i in range(6)]
    schedule += [(1180.0 + 30 * i, [{"a": {"standard": late}, "b": {"standard": late}}]) for i in range(4)]
    pols = ticks(book, schedule)
    assert pols[0]["a"]["standard"].share == pytest.approx(0.1)
    assert "standard" in book.cut_tiers(1270.0)
    assert pols[-1]["a"]["standard"].share == 1.0 and pols[-1]["b"]["standard"].share == 1.0


def test_a_report_with_nan_or_infinite_figures_keeps_the_book_strict_json():
    """Review, 2026-12-05: a NaN p95 or an infinite cutoff in a report was copied into the region
    counters, and a strict JSON dump of the book (``allow_nan=False``) raised."""
    book = PartnerBook()
    odd = msgspec.structs.replace(stats(40), p95_ms=float("nan"), cutoff_ms=float("inf"))
    book.absorb("us-east", "odd", {"fast": {"standard": odd}}, 1000.0)
    book.recompute(TIERS, 1000.0)
    json.dumps(book.to_dict(), allow_nan=False)
    assert book.regions["us-east"]["fast"]["called"] == 40
