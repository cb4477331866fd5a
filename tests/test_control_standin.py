"""The stand-in allowance (fleet.control.standin) from the other side: what it must not stop, and
what it must not hold back. Its money bound is attacked in tests/test_money_attacks.py (the
``_outage_then_crash`` tests) and tests/test_control_money.py; these are the liveness cases an
adversarial review found (2026-12-05), each failing on the first version of the change."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

from fleet.config import load_regions
from fleet.control.messages import Report
from fleet.control.pacer import DAY_S, Flight
from fleet.control.service import Control
from fleet.control.standin import PHANTOM
from fleet.pipeline.notices import Notice
from fleet.pipeline.pacing import LeaseBudget
from test_money_attacks import REGION, T0, Clock, _csync, _FakeRedis

CAMP = SimpleNamespace(id="c")
_SEQ = itertools.count(1)


def _report(name: str, b: LeaseBudget, clock: Clock, unit: float) -> Report:
    return Report(region=REGION, replica=name, ts=clock.t, seq=next(_SEQ), spend=b.mark_report(),
                  reserved={k: v for k, v in b.reserved.items() if v > 0}, units={"c": unit},
                  opportunities={"c": 100 * next(_SEQ)}, held=b.held())


def test_an_outage_across_midnight_does_not_stop_the_next_days_flight():
    """A daily campaign on plan ends its day with no room, so the last save before midnight had
    nothing to stand in for: an allowance capped by the room left was 0, and the next day's
    flight, rolled over while Redis was away, got no new room until Redis came back. The
    allowance is a share of the daily budget, so the new day bills through the outage."""
    day_end = (T0 // DAY_S + 1) * DAY_S
    clock = Clock(day_end - 30)
    redis = _FakeRedis()
    reps = {n: LeaseBudget(hold_s=3600.0, clock=clock) for n in ("r0", "r1")}
    budget = 1000.0
    billed_in_outage = 0.0

    async def go():
        nonlocal billed_in_outage
        c = Control(load_regions(), redis, clock=clock)
        await c.start()
        c.pacer.put_flight(Flight("c", budget, day_end - DAY_S, day_end, curve="even", daily=True))
        c.pacer.campaigns["c"].book.add(REGION, budget * (1 - 30 / DAY_S), clock.t)  # on plan so far
        k = 0
        while clock.t < day_end + 40:
            rel = clock.t - day_end
            redis.up = not -10 <= rel < 30
            for n, b in reps.items():
                p = await c.sync(_report(n, b, clock, 0.01))
                b.apply(p.leases, p.epoch)
            await c.tick(1.0)
            for b in reps.values():
                for _ in range(2):
                    k += 1
                    if b.reserve(CAMP, 0.006, clock.t, f"k{k}", until=clock.t + 900):
                        b.settle(Notice("bill", f"k{k}", "c", "cr", REGION, int(clock.t * 1000), "a", "1", 6.0,
                                        "USD", None, our_bid=6.0))
                        if 0 <= rel < 30:
                            billed_in_outage += 0.006
            clock.t += 1.0
        return c

    c = asyncio.run(go())
    assert c.pacer.campaigns["c"].flight.start == day_end  # the day rolled over
    assert billed_in_outage > 0.5 * 30 * 4 * 0.006, billed_in_outage  # most of the outage billed


def test_a_crash_loop_holds_back_no_more_than_one_allowance():
    """Every restart held its predecessor's whole allowance back for an hour, used or not: 500
    restarts 3 s apart held the whole budget. An incarnation inside its quiet period grants no
    new room, so the allowance it announces is none, and a crash loop holds back only what the
    last incarnation that could grant announced."""
    clock = Clock(T0)
    redis = _FakeRedis()
    reps = {"a": LeaseBudget(hold_s=3600.0, clock=clock)}
    budget = 1000.0

    async def go():
        c = Control(load_regions(), redis, clock=clock)
        await c.start()
        c.pacer.put_flight(Flight("c", budget, T0, T0 + DAY_S, curve="even"))
        clock.t += 10.0  # past the first start's quiet period: this one may stand in
        assert await c.save()
        for _ in range(100):
            clock.t += 3.0
            c = Control(load_regions(), redis, clock=clock)
            await c.start()
            await _csync(c, reps, "a", clock)
        return c

    c = asyncio.run(go())
    held = sum(rec.outstanding() for key, rec in c.pacer.leases.items() if PHANTOM in key)
    share = c.settings.standin_share
    assert 0 < held <= share * budget + 1e-9, held
