"""Money truth at control (plain Python and a real redis-server; no Ray): idempotent writes under
concurrency, one spend converging on the ledger's, leases counted while their bids may bill, and a
first day planned from its own start. The ledger's part is played by writing its Redis keys
(``fleet:<region>:ledger:spend:<day>`` and ``caught_up``) directly.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
from types import SimpleNamespace

import pytest

from fleet.config import load_regions
from fleet.control.api import route
from fleet.control.messages import Report
from fleet.control.pace_view import pace_view
from fleet.control.pacer import DAY_S, Flight
from fleet.control.service import STATE_KEY, Control
from fleet.control.spend import MARGIN_S
from fleet.ledger.consumer import ledger_prefix
from fleet.harness.pacing_loop import Clock


def _aioredis(url: str):
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, decode_responses=True)


def _interleaving(r) -> None:
    """Every GET and SET yields to the loop first, so two requests in flight interleave there."""
    get, set_ = r.get, r.set

    async def slow_get(*a, **k):
        await asyncio.sleep(0)
        return await get(*a, **k)

    async def slow_set(*a, **k):
        await asyncio.sleep(0)
        return await set_(*a, **k)

    r.get, r.set = slow_get, slow_set


# -- 1. idempotency keys ---------------------------------------------------------------------------

def test_concurrent_writes_with_one_idempotency_key_apply_once(redis_srv):
    """Two PUTs with the same Idempotency-Key and different bodies, concurrently, 30 times: one
    200 and one 422 each time, and the stored flight is the 200's; a retry of the winner's
    request gets its answer again, the loser's a 422 again."""
    clock = Clock()

    async def go():
        r = _aioredis(redis_srv.url)
        control = Control(load_regions(), r, clock=clock)
        await control.start()
        _interleaving(r)
        outcomes = []
        for i in range(30):
            bodies = [json.dumps({"budget": 100 + i, "start": 1_000_001, "end": 1_000_301}).encode(),
                      json.dumps({"budget": 500 + i, "start": 1_000_001, "end": 1_000_301}).encode()]
            cid, key = f"c{i}", f"key-{i}"
            res = await asyncio.gather(*(route(control, "PUT", f"/v1/campaigns/{cid}", body=b, idem=key)
                                         for b in bodies))
            stored = control.pacer.campaigns[cid].flight.budget
            again = [await route(control, "PUT", f"/v1/campaigns/{cid}", body=b, idem=key) for b in bodies]
            outcomes.append((res, stored, again))
        return outcomes

    for res, stored, again in asyncio.run(go()):
        statuses = sorted(s for s, _ in res)
        assert statuses == [200, 422], res
        won = next(b for s, b in res if s == 200)
        assert stored == won["budget"]
        assert [s for s, _ in again] == [s for s, _ in res]
        assert next(b for s, b in again if s == 200) == won


def test_a_same_request_retry_in_flight_waits_for_the_first_answer(redis_srv):
    """The same key and request twice at once: both get the one answer (the second waits for
    it); a write that fails frees the key, so a retry runs."""
    clock = Clock()

    async def go():
        r = _aioredis(redis_srv.url)
        control = Control(load_regions(), r, clock=clock)
        await control.start()
        _interleaving(r)
        runs = []

        async def write():
            runs.append(1)
            await asyncio.sleep(0.05)
            return 200, {"n": len(runs)}

        both = await asyncio.gather(control.idempotent("k", "fp", write), control.idempotent("k", "fp", write))

        def broken():
            raise ValueError("bad request")

        with pytest.raises(ValueError):
            await control.idempotent("k2", "fp", broken)
        retried = await control.idempotent("k2", "fp", lambda: (200, {"ok": True}))
        failed = await control.idempotent("k3", "fp", lambda: (503, {"error": "later"}))
        after = await control.idempotent("k3", "fp", lambda: (200, {"ok": 3}))
        return both, runs, retried, failed, after

    both, runs, retried, failed, after = asyncio.run(go())
    assert both == [(200, {"n": 1}), (200, {"n": 1})] and len(runs) == 1
    assert retried == (200, {"ok": True})
    assert failed[0] == 503 and after == (200, {"ok": 3})


# -- 2. one spend: control's books converge on the ledger's finalized spend --------------------------

DAY = 20_000  # a UTC day number
T0 = DAY * DAY_S + 10 * 3600.0  # 10:00 UTC that day


def _flight(cid: str = "c", budget: float = 100.0) -> Flight:
    return Flight(cid, budget, DAY * DAY_S, (DAY + 1) * DAY_S, curve="even", daily=True)


async def _control(url: str, clock, *flights: Flight) -> Control:
    control = Control(load_regions(), _aioredis(url), clock=clock)
    await control.start()
    for f in flights:
        control.pacer.put_flight(f)
    return control


async def _ledger(control: Control, region: str, spend: dict | None = None, caught_up: float | None = None,
                  day: int = DAY) -> None:
    """The ledger consumer's part: its finalized spend hash and its caught-up mark."""
    p = ledger_prefix(region)
    if spend:
        await control.redis.hset(f"{p}spend:{day}", mapping=spend)
    if caught_up is not None:
        await control.redis.set(p + "caught_up", repr(caught_up))


async def _report(control: Control, clock, region: str, replica: str, **spend: float):
    return await control.sync(Report(region=region, replica=replica, ts=clock.t, spend=spend))


async def _tick(control: Control, clock, dt: float = 1.0) -> None:
    clock.t += dt
    await control.tick(dt)


def test_a_bill_reported_by_two_replicas_counts_once_the_ledger_has_caught_up(redis_srv):
    """A resent bill reached two replicas of one region and each counted it: control counts it
    twice (never less than once) until the ledger's spend hash has it and its caught-up mark
    passes both reports (plus the skew margin); then exactly once, in every figure pacing uses.
    The rate signal (spend this interval) still saw both reports."""
    clock = Clock(T0)

    async def go():
        control = await _control(redis_srv.url, clock, _flight())
        cp = control.pacer.campaigns["c"]
        await _report(control, clock, "us-east", "a", c=1.0)
        await _report(control, clock, "us-east", "b", c=1.0)
        t_reports = clock.t
        seen = [cp.spent]
        await _ledger(control, "us-east", {"c": 1.0}, caught_up=t_reports - 5.0)  # applied, not caught up
        await _tick(control, clock)
        seen.append(cp.spent)
        await _ledger(control, "us-east", caught_up=t_reports + 0.5)  # within the skew margin
        await _tick(control, clock)
        seen.append(cp.spent)
        await _ledger(control, "us-east", caught_up=t_reports + MARGIN_S + 0.01)
        await _tick(control, clock)
        seen.append(cp.spent)
        # a later bill, counted by one replica, is provisional again until the ledger has it
        await _report(control, clock, "us-east", "a", c=1.5)
        seen.append(cp.spent)
        return control, seen

    control, seen = asyncio.run(go())
    assert seen[0] == pytest.approx(2.0)
    assert seen[1] == pytest.approx(3.0) and seen[2] == pytest.approx(3.0)  # in L and in P: never less
    assert seen[3] == pytest.approx(1.0)
    assert seen[4] == pytest.approx(1.5)
    cp = control.pacer.campaigns["c"]
    assert cp.by_region == {"us-east": pytest.approx(1.5)}
    v = pace_view(control.pacer, clock.t)["c"]
    assert (v["spent"], v["ledger"], v["provisional"]) == pytest.approx((1.5, 1.0, 0.5))
    assert cp.book.reported["us-east"] == pytest.approx(2.5)  # what the replicas said, for the drift figure
    # the lease cap uses the merged figure: a replica asking for everything gets what is left
    lease = control.pacer.grant(Report(region="eu-west", replica="e", ts=clock.t, units={"c": 1000.0}),
                                clock.t)["c"]
    assert lease.amount == pytest.approx(100.0 - 1.5 - control.pacer.outstanding("c", exclude="c|e"))


def test_an_ivt_reversal_lowers_controls_spend(redis_srv):
    """The ledger reverses an invalid bill (its spend hash goes down): control's spend follows,
    and the budget it had counted as gone is there to spend again."""
    clock = Clock(T0)

    async def go():
        control = await _control(redis_srv.url, clock, _flight())
        await _report(control, clock, "eu-west", "e", c=3.0)
        await _ledger(control, "eu-west", {"c": 3.0}, caught_up=clock.t + 2.0)
        await _tick(control, clock, 3.0)
        before = control.pacer.campaigns["c"].spent
        await control.redis.hincrbyfloat(f"{ledger_prefix('eu-west')}spend:{DAY}", "c", -1.2)
        await _tick(control, clock)
        return before, control.pacer.campaigns["c"].spent, pace_view(control.pacer, clock.t)["c"]

    before, after, view = asyncio.run(go())
    assert before == pytest.approx(3.0)
    assert after == pytest.approx(1.8) and view["spent"] == pytest.approx(1.8)


def test_with_the_ledger_out_of_reach_the_replicas_counts_stand(redis_srv):
    """A stopped consumer (its caught-up mark stale) or Redis gone altogether: no replica delta is
    dropped and the last good read stands, so control never counts less than the replicas
    reported; once the ledger is back and caught up, the books are the ledger's again."""
    clock = Clock(T0)

    async def go():
        control = await _control(redis_srv.url, clock, _flight())
        cp = control.pacer.campaigns["c"]
        await _report(control, clock, "us-east", "a", c=2.0)
        await _ledger(control, "us-east", {"c": 2.0}, caught_up=clock.t + 2.0)
        await _tick(control, clock, 3.0)
        figures = [cp.spent]  # 2.0, the ledger's
        # the consumer stops: its mark stays where it was while bills go on
        await _report(control, clock, "us-east", "a", c=5.0)
        for _ in range(5):
            await _tick(control, clock)
        figures.append(cp.spent)  # 2.0 + 3.0 provisional
        # Redis goes away: reads fail, syncs go on in memory
        redis_srv.stop()
        await _report(control, clock, "us-east", "a", c=6.0)
        for _ in range(3):
            await _tick(control, clock)
        figures.append(cp.spent)
        failures = control.ledger.read_failures
        redis_srv.start()
        await _ledger(control, "us-east", {"c": 6.0}, caught_up=clock.t + 2.0)
        await _tick(control, clock, 3.0)
        figures.append(cp.spent)
        return figures, failures, control.redis_up

    figures, failures, redis_up = asyncio.run(go())
    assert figures[:3] == pytest.approx([2.0, 5.0, 6.0])
    assert failures >= 3
    assert figures[3] == pytest.approx(6.0) and redis_up


def test_a_restarted_control_keeps_the_books(redis_srv):
    """Control dies with deltas the ledger does not hold yet: the next one loads them with the
    ledger's figures, counts the same, and drops them once the ledger has caught up. A state
    document from before control read the ledger loads too: its totals count until then."""
    clock = Clock(T0)

    async def go():
        control = await _control(redis_srv.url, clock, _flight(), _flight("d", 50.0))
        await _report(control, clock, "us-east", "a", c=1.0, d=0.5)
        await _ledger(control, "us-east", {"c": 1.0, "d": 0.5}, caught_up=clock.t + 2.0)
        await _tick(control, clock, 3.0)
        await _report(control, clock, "us-east", "a", c=1.75, d=0.5)
        await _report(control, clock, "ap-southeast", "p", c=0.25)
        await control.save()
        before = {cid: (cp.spent, cp.by_region) for cid, cp in control.pacer.campaigns.items()}
        book = control.pacer.campaigns["c"].book.to_dict()
        fresh = await _control(redis_srv.url, clock)
        after = {cid: (cp.spent, cp.by_region) for cid, cp in fresh.pacer.campaigns.items()}
        same_book = fresh.pacer.campaigns["c"].book.to_dict() == book
        await _ledger(fresh, "us-east", {"c": 1.75}, caught_up=clock.t + 2.0)
        await _tick(fresh, clock, 3.0)
        caught_up = fresh.pacer.campaigns["c"].by_region
        # an older document: spent and by_region only
        doc = json.loads(await fresh.redis.get(STATE_KEY))
        for c in doc["pacer"]["campaigns"].values():
            del c["book"]
        old = Control(load_regions(), None, clock=clock)
        old.load(doc)
        legacy = old.pacer.campaigns["c"]
        return before, after, same_book, caught_up, legacy

    before, after, same_book, caught_up, legacy = asyncio.run(go())
    assert after == before and same_book
    assert before["c"][0] == pytest.approx(2.0) and before["d"][0] == pytest.approx(0.5)
    assert caught_up == {"us-east": pytest.approx(1.75), "ap-southeast": pytest.approx(0.25)}
    assert legacy.spent == pytest.approx(2.0) and legacy.book.pending["us-east"][0][0] == clock.t


def test_a_flight_put_mid_day_leaves_out_the_campaigns_earlier_spend_that_day(redis_srv):
    """The ledger's spend is by UTC day. A flight starting at midnight counts its days whole; one
    put mid-day leaves out what the ledger showed for the campaign that day when it was put (an
    earlier flight's), and counts everything after, late bills of earlier bids included."""
    clock = Clock(T0)

    async def go():
        control = await _control(redis_srv.url, clock, _flight())
        await _ledger(control, "us-east", {"c": 4.0}, caught_up=clock.t)
        await _tick(control, clock)
        whole = control.pacer.campaigns["c"].spent
        status, _ = await route(control, "PUT", "/v1/campaigns/c", body=json.dumps(
            {"budget": 10, "start": clock.t + 5, "end": clock.t + 3605, "daily": False}).encode())
        await _tick(control, clock)
        fresh = control.pacer.campaigns["c"].spent
        await control.redis.hincrbyfloat(f"{ledger_prefix('us-east')}spend:{DAY}", "c", 0.5)  # a late bill
        await _tick(control, clock)
        return status, whole, fresh, control.pacer.campaigns["c"].spent

    status, whole, fresh, late = asyncio.run(go())
    assert status == 200 and whole == pytest.approx(4.0)
    assert fresh == pytest.approx(0.0) and late == pytest.approx(0.5)


# -- 3. leases count until any bid under them may still bill ----------------------------------------

def test_a_vanished_replicas_lease_counts_until_its_bids_may_no_longer_bill():
    """A replica reserves against its lease and is SIGKILLed (it never reports again): what its
    lease may still bill stays out of the other replicas' grants until ``hold_s`` after the lease
    expired, however often they ask and whatever ticks pass; then it is free."""
    clock = Clock(T0)
    control = Control(load_regions(), None, clock=clock)
    pacer = control.pacer
    assert pacer.s.hold_s >= control.config.defaults.ledger.max_bill_window_s
    pacer.put_flight(Flight("c", 10.0, T0, T0 + DAY_S, curve="even"))

    def sync(region, replica, reserved, unit=1.0):
        rep = Report(region=region, replica=replica, ts=clock.t, reserved={"c": reserved}, units={"c": unit})
        pacer.absorb(rep, clock.t)
        return pacer.grant(rep, clock.t)["c"]

    sync("us-east", "gone", 0.0)
    clock.t += 1.0
    lost = sync("us-east", "gone", 2.5)  # 2.5 reserved in bids that may bill for an hour
    assert lost.amount >= 2.5
    grants = []
    while clock.t < lost.expires_at + pacer.s.hold_s + 30:
        clock.t += 20.0
        pacer.tick(clock.t, 20.0)
        grants.append((clock.t, sync("eu-west", "other", 0.0, unit=1000.0).amount))  # wants it all
    for t, amount in grants:
        if t <= lost.expires_at + pacer.s.hold_s:
            assert amount == pytest.approx(10.0 - lost.amount), t
        else:
            assert amount == pytest.approx(10.0), t


def test_a_lease_never_shrinks_below_the_replicas_own_reservations():
    """A replica's reservations are bids that may still bill: when the cap is below them (the
    spend counted twice for a while, or the flight paused) its lease still covers them, so the
    other replicas cannot be granted that money once the overcount is gone."""
    clock = Clock(T0)
    pacer = Control(load_regions(), None, clock=clock).pacer
    pacer.put_flight(Flight("c", 10.0, T0, T0 + DAY_S, curve="even"))
    rep = Report(region="us-east", replica="a", ts=clock.t, spend={"c": 6.0}, reserved={"c": 6.0})
    pacer.absorb(rep, clock.t)
    lease = pacer.grant(rep, clock.t)["c"]  # counted 6 spent: the cap is 4, the replica holds 6
    assert lease.amount == pytest.approx(6.0) and pacer.outstanding("c") == pytest.approx(6.0)
    pacer.put_flight(Flight("c", 10.0, T0, T0 + DAY_S, curve="even", paused=True))
    assert "c" not in pacer.grant(rep, clock.t)
    assert pacer.outstanding("c") == pytest.approx(6.0)


class _Replica:
    """A replica's side of the lease protocol (as ``LeaseBudget``), kept to what the bound needs."""

    def __init__(self, name: str, region: str):
        self.name, self.region = name, region
        self.alive = True
        self.lease = None  # [amount, expires_at, committed]
        self.holds: dict[str, tuple[float, float]] = {}  # bid -> (price, deadline)
        self.spend = 0.0
        self.settled: set[str] = set()

    def reserved(self) -> float:
        return sum(p for p, _ in self.holds.values())

    def bid(self, bid: str, price: float, now: float, deadline: float) -> bool:
        lease = self.lease
        if lease is None or now >= lease[1] or lease[2] + price > lease[0] + 1e-12:
            return False
        lease[2] += price
        self.holds[bid] = (price, deadline)
        return True

    def bill(self, bid: str, price: float) -> None:
        """A bill whose event is durable: count it once (held or not: a resent notice, or one for a
        bid another replica made)."""
        self.holds.pop(bid, None)
        if bid not in self.settled:
            self.settled.add(bid)
            self.spend += price

    def expire(self, now: float) -> None:
        for bid in [b for b, (_, dl) in self.holds.items() if dl <= now]:
            del self.holds[bid]

    def room(self, now: float) -> float:
        lease = self.lease
        return max(0.0, lease[0] - lease[2]) if self.alive and lease is not None and now < lease[1] else 0.0


@pytest.mark.parametrize("standin", [None, 0.05, 0.005])
def test_spend_never_passes_the_budget_whatever_replicas_and_the_ledger_do(redis_srv, monkeypatch, standin):
    """Property-style, seeded, a few thousand steps: replicas bid under their leases, notices
    come late, twice, to another replica, or never; replicas are SIGKILLed (their bids still
    bill through others) and new ones start; the ledger lags, stops, is read with errors, reverses
    IVT; control restarts once. Throughout, with E the spend that is billed or may still bill
    (the ledger's truth plus every hold before its deadline, a dead replica's included) and R the
    room live leases still give: E + R <= budget; E <= control's spend + what its leases may
    still commit; and a grant that gives new room leaves control's spend + outstanding <= budget.
    With ``standin`` (a stand-in share): control's state cannot be saved at times (Redis away for it, seconds at a
    time) and control crashes three times, each time while its saves fail and with a replica
    dying beside it, unsaved leases and all (``fleet.control.standin``)."""
    from fleet.control import ledger_view

    rng = random.Random(19 if standin is None else 23)
    outage = {"on": False, "restarts": 0, "unsaved": 0}

    def guard(control):
        """Control's saves fail while ``outage["on"]`` (the ledger's Redis stays up)."""
        if standin is None:
            return control
        control.standin.share = standin
        real_set = control.redis.set

        async def state_set(k, *a, **kw):
            if k == STATE_KEY and outage["on"]:
                raise ConnectionError("Redis away")
            return await real_set(k, *a, **kw)

        control.redis.set = state_set
        return control

    window = 120.0  # the bills' deadline; control counts a lapsed lease as long
    budget = 20.0
    real_read = ledger_view.read_ledger

    async def flaky_read(*a, **k):
        if rng.random() < 0.1:
            raise ConnectionError("injected")
        return await real_read(*a, **k)

    monkeypatch.setattr(ledger_view, "read_ledger", flaky_read)
    clock = Clock(T0)

    async def go():
        control = guard(await _control(redis_srv.url, clock, Flight("c", budget, T0, T0 + 250.0, curve="even")))
        control.pacer.s.hold_s = window
        r = control.redis
        key = f"{ledger_prefix('us-east')}spend:{DAY}"
        reps = [_Replica(f"a{i}", "us-east") for i in range(3)]
        next_sync = {x.name: clock.t + rng.random() for x in reps}
        notices: list = []  # (due, seq, kind, bid)
        bids: dict[str, tuple[str, float, float]] = {}  # bid -> (replica, price, deadline)
        stream: list[tuple[float, str, float]] = []  # durable bill events: (t, bid, price)
        applied: set[str] = set()
        truth = {"billed": 0.0}
        ivt_done: set[str] = set()
        ledger_on, seq, checks = True, 0, {"grants": 0, "steps": 0}
        for step in range(3000):
            now = clock.t
            # notices due: a bill is durable (stream) before the replica that got it counts it
            while notices and notices[0][0] <= now:
                _, _, kind, bid = heapq.heappop(notices)
                owner, price, deadline = bids[bid]
                if now > deadline:
                    continue  # refused: past the bid's signed deadline
                alive = [x for x in reps if x.alive]
                home = next(x for x in reps if x.name == owner)
                at = home if home.alive else rng.choice(alive)
                if kind == "loss":
                    at.holds.pop(bid, None)
                    continue
                stream.append((now, bid, price))
                at.bill(bid, price)
            for x in reps:
                x.expire(now)
            # bids
            for x in reps:
                if x.alive and rng.random() < 0.5:
                    seq += 1
                    bid, price = f"b{seq}", round(rng.uniform(0.05, 0.6), 3)
                    deadline = now + rng.uniform(5.0, window)
                    if x.bid(bid, price, now, deadline):
                        bids[bid] = (x.name, price, deadline)
                        u = rng.random()
                        if u < 0.45:
                            heapq.heappush(notices, (rng.uniform(now + 0.2, deadline + 5.0), seq, "bill", bid))
                            if rng.random() < 0.3:  # resent, maybe to another replica
                                heapq.heappush(notices, (rng.uniform(now + 0.2, deadline + 5.0), -seq, "bill", bid))
                        elif u < 0.85:
                            heapq.heappush(notices, (rng.uniform(now + 0.2, deadline), seq, "loss", bid))
            # replicas die and start
            if rng.random() < 0.004:
                victim = rng.choice([x for x in reps if x.alive])
                victim.alive = False
                fresh = _Replica(f"a{len(reps)}", "us-east")
                reps.append(fresh)
                next_sync[fresh.name] = now + rng.uniform(0.0, 2.0)
            # the ledger: applies what is in the stream, marks itself caught up (its clock a bit off)
            if rng.random() < 0.01:
                ledger_on = not ledger_on
            if ledger_on and rng.random() < 0.7:
                for t, bid, price in stream:
                    if bid not in applied:
                        applied.add(bid)
                        truth["billed"] += price
                        await r.hincrbyfloat(key, "c", price)
                await r.set(f"{ledger_prefix('us-east')}caught_up", repr(now + rng.uniform(-2.0, 0.9)))
                if applied - ivt_done and rng.random() < 0.02:  # an IVT reversal
                    bid = rng.choice(sorted(applied - ivt_done))
                    ivt_done.add(bid)
                    truth["billed"] -= bids[bid][1]
                    await r.hincrbyfloat(key, "c", -bids[bid][1])
            # syncs: report, lease
            for x in reps:
                if x.alive and next_sync[x.name] <= now:
                    next_sync[x.name] = now + rng.uniform(0.8, 1.2)
                    held = x.reserved()
                    push = await control.sync(Report(region=x.region, replica=x.name, ts=now, spend={"c": x.spend},
                                                     reserved={"c": held}, units={"c": 0.6},
                                                     opportunities={"c": step}))
                    lease = push.leases.get("c")
                    outage["unsaved"] += outage["on"] and lease is not None and lease.amount - held > 1e-9
                    x.lease = None if lease is None else [lease.amount, lease.expires_at, held]
                    if lease is not None and lease.amount - held > 1e-9:
                        checks["grants"] += 1
                        c = control.pacer.campaigns["c"].spent + control.pacer.outstanding("c")
                        assert c <= budget + 1e-9, (step, c)
            if step % 10 == 0:
                await control.tick(1.0)
            if standin is None and step == 1500:  # control restarts from its saved state
                await control.save()
                control = await _control(redis_srv.url, clock)
                control.pacer.s.hold_s = window
            elif standin is not None:
                crash = any(0 <= c - step <= 50 for c in (700, 1500, 2300))  # away from here to the crash
                if rng.random() < 0.01 or step in (650, 1450, 2250):  # Redis away for control, or back
                    outage["on"] = crash or not outage["on"]
                    if step in (650, 1450, 2250):  # a replica starts: all its leases unsaved
                        fresh = _Replica(f"a{len(reps)}", "us-east")
                        reps.append(fresh)
                        next_sync[fresh.name] = now
                if outage["on"] and step in (700, 1500, 2300):
                    # control crashes while its saves fail, and the replica holding the most
                    # (unsaved leases and all) dies with it; it restarts once Redis is back,
                    # from the last saved state
                    victim = max((x for x in reps if x.alive), key=lambda x: x.reserved())
                    victim.alive = False
                    fresh = _Replica(f"a{len(reps)}", "us-east")
                    reps.append(fresh)
                    next_sync[fresh.name] = now + rng.uniform(0.0, 2.0)
                    outage["on"] = False
                    outage["restarts"] += 1
                    control = guard(await _control(redis_srv.url, clock))
                    control.pacer.s.hold_s = window
            # the bound
            # a dead replica's hold stays with it: one billed through another replica bills no more
            billed_bids = {bid for _, bid, _ in stream}
            may_bill = sum(p for x in reps for bid, (p, dl) in x.holds.items() if dl >= now and bid not in billed_bids)
            exposure = truth["billed"] + sum(price for t, bid, price in stream if bid not in applied) + may_bill
            room = sum(x.room(now) for x in reps)
            assert exposure + room <= budget + 1e-9, (step, exposure, room)
            checks["peak"] = max(checks.get("peak", 0.0), exposure + room)
            counted = control.pacer.campaigns["c"].spent + control.pacer.outstanding("c")
            assert exposure <= counted + 1e-9, (step, exposure, counted)
            checks["steps"] += 1
            clock.t += rng.uniform(0.05, 0.2)
        return checks, truth["billed"], sum(1 for x in reps if not x.alive)

    checks, billed, dead = asyncio.run(go())
    assert checks["steps"] == 3000 and checks["grants"] > 200 and dead >= 2
    if standin is not None:  # the attack happened: crashes mid-outage, new room pushed unsaved
        assert outage["restarts"] >= 2 and outage["unsaved"] >= 10, outage
    assert billed > 0.5 * budget, billed  # the budget was actually contended for


# -- 4. a first day planned from its own start --------------------------------------------------------

def test_a_fleet_started_mid_day_plans_the_first_day_from_its_start():
    """Started at 20:00 UTC, control seeds each catalog campaign's first day from now to
    midnight, with the share of the daily budget that the day's curve still has to come, planned
    along the rest of that curve: nothing planned yet (not 80% of the day behind), the day's plan
    from then on, a pacing error near 0 on plan; the next day is a whole one at the full budget.
    A daily campaign created through the API mid-day is the same, and so is a change to it."""
    t0 = DAY * DAY_S + 20 * 3600.0
    clock = Clock(t0)
    control = Control(load_regions(), None, clock=clock, catalog=[SimpleNamespace(id="cat", budget_daily=240.0)])
    asyncio.run(control.start())
    day = Flight("x", 240.0, DAY * DAY_S, (DAY + 1) * DAY_S).shape()  # the whole day's curve
    left = 1.0 - day.fraction(t0)
    cp = control.pacer.campaigns["cat"]
    f = cp.flight
    assert (f.start, f.end, f.daily, f.day_budget) == (t0, (DAY + 1) * DAY_S, True, 240.0)
    assert f.budget == pytest.approx(240.0 * left)
    v = pace_view(control.pacer, t0)["cat"]
    assert v["planned"] == pytest.approx(0.0) and v["pacing_error"] is None  # was -1: 80% of a day planned
    clock.t = t0 + 3600.0
    planned = 240.0 * (day.fraction(clock.t) - day.fraction(t0))
    assert pace_view(control.pacer, clock.t)["cat"]["planned"] == pytest.approx(planned)
    control.pacer.absorb(Report(region="us-east", replica="a", ts=clock.t, spend={"cat": planned}), clock.t)
    assert pace_view(control.pacer, clock.t)["cat"]["pacing_error"] == pytest.approx(0.0, abs=1e-6)
    assert control.pacer._plan(cp, clock.t, 1.0) == pytest.approx(240.0 * (day.fraction(clock.t + 1) - day.fraction(clock.t)),
                                                                 rel=1e-3)
    # a restart keeps it; the next day renews whole, at the full daily budget
    again = Control(load_regions(), None, clock=clock)
    again.load(json.loads(json.dumps(control.to_dict())))
    assert again.pacer.campaigns["cat"].flight == f
    clock.t = (DAY + 1) * DAY_S + 5.0
    control.pacer.tick(clock.t, 1.0)
    f2 = cp.flight
    assert (f2.start, f2.end, f2.budget, f2.day_budget) == ((DAY + 1) * DAY_S, (DAY + 2) * DAY_S, 240.0, None)
    assert cp.days[-1]["budget"] == pytest.approx(240.0 * left) and cp.spent == 0.0

    # through the API: a new daily campaign at 20:00, then its daily budget changed
    clock.t = t0

    async def api():
        s1, v1 = await route(control, "PUT", "/v1/campaigns/new", body=b'{"budget": 100}')
        s2, v2 = await route(control, "PUT", "/v1/campaigns/new", body=b'{"budget": 200}')
        return s1, v1, s2, v2

    s1, v1, s2, v2 = asyncio.run(api())
    assert (s1, s2) == (200, 200)
    assert v1["start"] == t0 and v1["budget"] == pytest.approx(100.0 * left) and v1["pacing_error"] is None
    assert v2["start"] == t0 and v2["budget"] == pytest.approx(200.0 * left)
    assert control.pacer.campaigns["new"].flight.day_budget == 200.0
