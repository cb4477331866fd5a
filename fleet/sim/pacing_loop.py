"""Control's pacing loop in-process: control, three regions' lease budgets and a seeded market on
a simulated clock (no Ray, no HTTP), so pacing figures can be checked exactly and quickly.

The closed loop is the code the fleet runs (``Control.sync``/``tick``, ``LeaseBudget``); only the
auctions are drawn here. ``tests/test_control.py`` drives ``Loop`` (a market per campaign);
``python -m fleet.sim.pacing_loop --seeds 1 2 3`` runs ``LiveRun``, the live pacing run
(``fleet sim pacing --day 600 --rate 150 --fill 0.45 --kill-control``: the pacing catalog, a flat
probe flight, then a 600 s diurnal day with budgets set from the probe) request by request, and
prints ``fleet.sim.pacing.summarise``'s figures per seed (``--simple``: ``Loop``'s live-like day).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
from types import SimpleNamespace

from fleet.control.api import route
from fleet.control.curve import Curve, cosine_weights
from fleet.control.messages import Report
from fleet.pipeline.pacing import LeaseBudget

REGIONS = ("us-east", "eu-west", "ap-southeast")


def _reported(b: LeaseBudget) -> dict[str, float]:
    """The cumulative spend a replica's report carries (marked, where the replica marks it)."""
    return b.mark_report() if hasattr(b, "mark_report") else dict(b.spend)


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method: the rates here are small)."""
    n, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p < limit:
            return n
        n += 1


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Loop:
    """Control, one lease-holding replica per region, and a market: each campaign has eligible
    opportunities per region at a diurnal rate; a bid wins 40% of the time at its price; notices
    arrive later (some dropped, some resent).

    ``fill`` (one share for every campaign) and ``live`` (the live run's budgets, each campaign
    its own win rate and clearing price below its bid, so spend per bid is not known in advance,
    and some notices late) bring it closer to the live run; ``probe_s`` runs a flat,
    unconstraining flight first, as the live run does."""

    def __init__(self, clock: Clock, control, n: int = 50, day_s: float = 300.0, seed: int = 3,
                 fill: float | None = None, live: bool = False, probe_s: float = 0.0, amp: float = 0.6):
        self.clock, self.control = clock, control
        self.rng = random.Random(seed)
        self.probe_s = probe_s
        self.day_put = probe_s <= 0  # with a probe, the day's flights go in a few seconds before
        self.probe_start = clock.t + 2.0
        self.day_s = day_s
        self.start = self.probe_start + (probe_s + 5.0 if probe_s > 0 else 0.0)
        self.amp = amp
        # Live, reservations are held for control's ``hold_s`` (30 s), longer than a late notice.
        self.budgets = {r: LeaseBudget(hold_s=30.0 if live else 10.0, clock=clock, rng=self.rng.random)
                        for r in REGIONS}
        # Live, every campaign bids unthrottled in the probe and the fleet's own auction takes most
        # of the impressions from each: a bid wins less often than on the paced day.
        self.probe_win = 1 / 3 if live else 1.0
        self.late = live
        self.campaigns = []
        self.limited: set[str] = set()  # live: budgets the traffic cannot fill (reported apart)
        if live:
            self._live_campaigns(n, seed, fill if fill is not None else 0.45)
        for i in range(0 if live else n):
            price = round(self.rng.uniform(1.0, 6.0), 2) / 1000.0
            # Eligible opportunities per second and region: scarce for some campaigns, abundant
            # (far more than the budget needs) for others, none in some regions.
            rates = {r: (self.rng.uniform(1.0, 5.0) if self.rng.random() < 0.5 else self.rng.uniform(10.0, 40.0))
                     if self.rng.random() < 0.8 else 0.0 for r in REGIONS}
            # Unthrottled, a campaign could spend price * 0.4 * rate per second; give it a share
            # of that (half for scarce traffic, as little as a tenth for abundant).
            capacity = sum(rates.values()) * price * 0.4 * day_s
            share = 0.5 if sum(rates.values()) < 15 else self.rng.uniform(0.1, 0.5)
            c = SimpleNamespace(id=f"c{i}", price=price, rates=rates, win=0.4, clear=1.0,
                                budget=round((fill if fill is not None else share) * capacity, 2))
            self.campaigns.append(c)
        self.events: list = []
        self.true_spend = {c.id: 0.0 for c in self.campaigns}
        self.billed: set[str] = set()
        self.samples: list[tuple[float, dict]] = []
        self.bound_violations = 0
        self.max_breach = 0.0  # the largest excess over the lease bound, in currency
        self.seq = 0

    def _live_campaigns(self, n: int, seed: int, fill: float) -> None:
        """As the live run's catalog and budgets: each campaign aimed at one region or all, on
        abundant traffic, with its own win rate and clearing price; budgets are ``fill`` of what
        the fleet can win (one impression per request, 150 requests a second) split by share of
        eligible opportunities, so the right throttle is far below 1 (0.01 to 0.2)."""
        rng = random.Random(seed + 1000)
        for i in range(n):
            where = rng.choice(REGIONS + (None,))
            rates = {r: rng.uniform(5.0, 60.0) if where in (None, r) else 0.0 for r in REGIONS}
            self.campaigns.append(SimpleNamespace(id=f"c{i}", price=round(rng.uniform(2.0, 9.0), 2) / 1000.0,
                                                  rates=rates, win=rng.uniform(0.1, 0.6),
                                                  clear=rng.uniform(0.5, 1.0), budget=0.0))
        fleet_rate = 150.0 * 0.3 * sum(c.price * c.clear for c in self.campaigns) / n
        opps = sum(sum(c.rates.values()) for c in self.campaigns)
        for c in self.campaigns:
            c.budget = round(fill * fleet_rate * self.day_s * sum(c.rates.values()) / opps, 4)
            if c.budget > 0.9 * sum(c.rates.values()) * c.price * c.clear * c.win * self.day_s:
                self.limited.add(c.id)

    async def _put(self, cid: str, body: str) -> None:
        status, _ = await route(self.control, "PUT", f"/v1/campaigns/{cid}", body=body.encode())
        assert status == 200

    async def setup(self):
        if self.probe_s > 0:
            for c in self.campaigns:
                await self._put(c.id, f'{{"budget": 1000000, "start": {self.probe_start}, '
                                      f'"end": {self.probe_start + self.probe_s + 2}, "curve": "even"}}')
        else:
            await self.put_day()

    async def put_day(self):
        for c in self.campaigns:
            await self._put(c.id, f'{{"budget": {c.budget}, "start": {self.start}, "end": {self.start + self.day_s}, '
                                  f'"curve": "traffic", "weights": {cosine_weights(self.amp)}}}')

    def in_probe(self, t: float) -> bool:
        return self.probe_s > 0 and self.probe_start <= t < self.probe_start + self.probe_s

    def traffic(self, t: float) -> float:
        if self.in_probe(t):
            return 1.0
        x = (t - self.start) / self.day_s
        return 1.0 - self.amp * math.cos(2 * math.pi * x) if 0 <= x < 1 else 0.0

    def step(self, dt: float):
        t = self.clock.t
        while self.events and self.events[0][0] <= t:
            _, _, region, notice = heapq.heappop(self.events)
            self.budgets[region].settle(notice, t)
            key = f"{notice.auction_id}:{notice.imp_id}"
            if notice.kind == "bill" and key not in self.billed:  # the exchange bills once
                self.billed.add(key)
                self.true_spend[notice.campaign] += notice.price / 1000.0
        f = self.traffic(t)
        for c in self.campaigns:
            for region, rate in c.rates.items():
                n = self._poisson(rate * f * dt)
                for _ in range(n):
                    b = self.budgets[region]
                    camp = SimpleNamespace(id=c.id)
                    if not b.allow(camp, c.price, t):
                        continue
                    self.seq += 1
                    key = f"a{self.seq}:1"
                    assert b.reserve(camp, c.price, t, key)
                    won = self.rng.random() < c.win * (self.probe_win if self.in_probe(t) else 1.0)
                    delay = self.rng.uniform(0.05, 0.5)
                    if won:
                        self._notice(t + delay, region, "win", key, c, 0)
                        if self.rng.random() < 0.97:
                            self._notice(t + delay + self.rng.uniform(0.1, 1.0), region, "bill", key, c, 0)
                            if self.rng.random() < 0.05:  # resent
                                self._notice(t + delay + 2.0, region, "bill", key, c, 1)
                    elif self.rng.random() < 0.95:
                        self._notice(t + delay, region, "loss", key, c, 0)

    def _notice(self, when, region, kind, key, c, dup):
        if self.late and self.rng.random() < 0.05:  # as the live exchanges: some notices 2-10 s late
            when += self.rng.uniform(2.0, 10.0)
        auction, imp = key.split(":")
        n = SimpleNamespace(kind=kind, auction_id=auction, imp_id=imp, bid_id=key, campaign=c.id,
                            price=c.price * c.clear * 1000.0 if kind != "loss" else None, dup=dup,
                            flags=(), bid_ts_ms=int(self.clock.t * 1000))
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, region, n))

    def _poisson(self, lam: float) -> int:
        return poisson(self.rng, lam)

    async def sync_all(self):
        t = self.clock.t
        for region, b in self.budgets.items():
            b.expire(t)
            rep = Report(region=region, replica=f"{region}-r1", ts=t, spend=_reported(b),
                         reserved=dict(b.reserved), opportunities=dict(b.opportunities), blocked=dict(b.blocked),
                         throttled=dict(b.throttled), units=dict(b.units))
            push = await self.control.sync(rep)
            b.apply(push.leases, push.epoch)

    def check_bound(self):
        """True spend never above what control counts as spent plus what leases may still commit."""
        for c in self.campaigns:
            cp = self.control.pacer.campaigns[c.id]
            if cp.flight.budget != c.budget:
                continue  # the probe's flight: unconstrained by design
            over = max(self.true_spend[c.id] - cp.spent - self.control.pacer.outstanding(c.id),
                       self.true_spend[c.id] - c.budget)
            if over > 1e-9:
                self.bound_violations += 1
                self.max_breach = max(self.max_breach, over)

    async def run(self, until: float, dt: float = 0.1, on_tick=None):
        interval = self.control.settings.interval_s
        next_sync = self.clock.t
        while self.clock.t < until:
            if not self.day_put and self.clock.t >= self.start - 3.0:
                # As the live run: the day's flights replace the probe's a few seconds ahead. The
                # day's spend starts from what control will count for it: bills billed before but
                # not yet reported, and every bill after.
                await self.put_day()
                books = self.control.pacer.replicas
                self.true_spend = {cid: sum(b.spend.get(cid, 0.0) - books[f"{r}-r1"].spend.get(cid, 0.0)
                                            for r, b in self.budgets.items()) for cid in self.true_spend}
                self.day_put = True
            if self.clock.t >= next_sync:
                await self.sync_all()
                await self.control.tick(interval)
                self.check_bound()
                self.samples.append((self.clock.t, dict(self.true_spend)))
                next_sync += interval
                if on_tick is not None:
                    await on_tick(self)
            self.step(dt)
            self.clock.t += dt

    def report(self, skip_s: float = 0.0) -> dict:
        """Final delivery per campaign, and pacing error at each 30 s mark of the flight (marks
        before ``skip_s`` left out of ``p90_error``; ``p90_all`` has them all)."""
        curve = Curve(self.start, self.start + self.day_s, cosine_weights(self.amp))
        # A budget of a few dozen impressions cannot land within 2%: one impression is more.
        # "Enough eligible traffic": at least 100 impressions' worth of budget.
        finals = {c.id: self.true_spend[c.id] / c.budget for c in self.campaigns
                  if c.budget >= 100 * c.price and c.id not in self.limited}
        errors, late_errors, window_errors, by_mark = [], [], [], {}
        marks = [m for m in self.samples if self.start <= m[0] <= self.start + self.day_s + 1]
        for c in self.campaigns:
            if c.id not in finals:
                continue
            for w0 in range(0, int(self.day_s), 30):
                a = min(marks, key=lambda m: abs(m[0] - (self.start + w0)))
                b = min(marks, key=lambda m: abs(m[0] - (self.start + w0 + 30)))
                # Pacing error at each 30 s mark: spend to date against plan to date.
                plan_to_date = c.budget * curve.fraction(b[0])
                if plan_to_date > 0:
                    e = (b[1][c.id] - plan_to_date) / plan_to_date
                    errors.append(abs(e))
                    by_mark.setdefault(w0 + 30, []).append(e)
                    if w0 + 30 >= skip_s:
                        late_errors.append(abs(e))
                # And within the window alone (dominated by impression counts at this volume).
                plan = c.budget * (curve.fraction(b[0]) - curve.fraction(a[0]))
                if plan > 0:
                    window_errors.append(abs((b[1][c.id] - a[1][c.id]) - plan) / plan)
        errors.sort()
        late_errors.sort()
        window_errors.sort()
        return {"finals": finals, "p90_all": errors[int(0.9 * len(errors))],
                "p90_error": late_errors[int(0.9 * len(late_errors))], "windows": len(errors),
                "p90_window_error": window_errors[int(0.9 * len(window_errors))],
                "median_by_mark": {m: sorted(v)[len(v) // 2] for m, v in sorted(by_mark.items())}}


class LiveRun:
    """The live pacing run (``fleet sim pacing``, ``fleet.sim.pacing.run_pacing``) request by
    request, on a simulated clock, against control and one ``LeaseBudget`` replica per region.

    What ``Loop`` leaves out and the live run has: one bid per request, so the probe (every
    campaign unthrottled) is an auction among the fleet's own campaigns that the paced day is not
    (a participation spends far less in the probe than on the day, and a low bidder almost
    nothing); the simulated market's opportunities, targeting, floors, competing bids and first-
    and second-price auctions (``fleet.sim.market``, seed 7 as the live run) with the pacing
    catalog (``synth:pacing:50:11``) priced roughly as the model does; the exchanges' notices
    (5% dropped, 5% sent twice, 5% 2-10 s late, 3% of wins never rendered, 0.4% of answers late
    and so never notified), each reservation held until its notice deadline (``bill_window_s``:
    the live run's imps say 30 s; without ``exp``, 900 s would outlast the day); budgets set
    from the probe through control's view exactly as ``run_pacing`` does (after the probe's
    notices have drained and 2 s more), the day's flights put one by one from 3 s before the
    start; replicas syncing out of phase with control's tick; a ledger per region that applies
    bills ``ledger_lag_s`` after the replica counted them (control reads it every tick, so a
    bill counts twice until the caught-up mark passes its report, as live); optionally control
    killed at mid-day (gone ``kill_s``, then restarted from its state document). The figures are
    ``fleet.sim.pacing.summarise``'s, from control's campaign view sampled every 2 s, as live."""

    def __init__(self, clock: Clock, control, seed: int = 1, day_s: float = 600.0, rate: float = 150.0,
                 probe_s: float = 30.0, fill: float = 0.45, amp: float = 0.6, catalog: str = "synth:pacing:50:11",
                 market_seed: int = 7, ledger_lag_s: float = 0.5, kill_s: float | None = None,
                 bill_window_s: float = 30.0, dt: float = 0.05, shade: float = 0.6, late_rate: float = 0.05):
        from fleet.campaigns.catalog import load_catalog
        from fleet.sim.market import Market, campaign_quality, interests

        self.clock, self.control = clock, control
        self.config = control.config
        self.names = list(self.config.regions)
        self.shares = {n: self.config.regions[n].budget_share for n in self.names}
        self.rng = random.Random(seed)
        self.market = Market(seed=market_seed, regions=tuple(self.names))
        self.campaigns = load_catalog(catalog)
        self.by_id = {c.id: c for c in self.campaigns}
        self.day_s, self.rate, self.probe_s, self.fill, self.amp = day_s, rate, probe_s, fill, amp
        self.ledger_lag_s, self.kill_s, self.bill_window_s, self.dt = ledger_lag_s, kill_s, bill_window_s, dt
        self.late_rate = late_rate  # notices sent 2-10 s late
        self.shade = shade  # first price: about what surplus-maximising shading bids (value x 0.6)
        self.budgets = {n: LeaseBudget(hold_s=3600.0, clock=clock, rng=random.Random(seed * 31 + i).random)
                        for i, n in enumerate(self.names)}
        self.phase = {n: 0.13 + 0.31 * i for i, n in enumerate(self.names)}  # sync offsets in the second
        self.next_sync = {n: clock.t + self.phase[n] for n in self.names}
        self.next_tick = clock.t + 1.0
        # Targeting: banner size and country (the pacing catalog targets nothing else).
        self.sizes = {c.id: {(cr.w, cr.h) for cr in c.creatives if cr.format == "banner"} for c in self.campaigns}
        self.quality = {c.id: campaign_quality(c.id) for c in self.campaigns}
        self.interests = {c.id: interests(c) for c in self.campaigns}
        self._eligible_cache: dict = {}
        self.events: list = []  # (due, seq, region, notice)
        self.seq = 0
        self.ledger = {n: {} for n in self.names}  # region -> day -> campaign -> finalized spend
        self.ledger_queue = {n: [] for n in self.names}  # (apply at, day, campaign, amount)
        self.ledger_keys = {n: set() for n in self.names}
        self.charged: dict[str, list[tuple[float, float]]] = {}  # campaign -> [(t, USD)], as the exchange billed
        self.samples: list[tuple[float, dict]] = []
        self.next_sample = math.inf
        self.down_until = -math.inf
        self.puts: list[tuple[float, str, str]] = []  # (when, campaign, body)
        self.start = math.inf
        self.probe_t0 = self.probe_t1 = math.inf
        self.budgets_set: dict[str, float] = {}
        self.bids = self.late_answers = 0
        self.records: list = []  # the day's auctions, as the exchanges record them (for summarise)

    # -- the market ------------------------------------------------------------------------

    def eligible(self, opp) -> list:
        if opp.fmt != "banner":
            return []
        key = (opp.user.country, opp.size)
        got = self._eligible_cache.get(key)
        if got is None:
            # The targeting stage's candidates: the best max bids first, at most 16 per imp.
            got = self._eligible_cache[key] = sorted(
                (c for c in self.campaigns if opp.size in self.sizes[c.id]
                 and (not c.targeting.countries or opp.user.country in c.targeting.countries)),
                key=lambda c: -c.strategy.max_bid)[:16]
        return got

    def price(self, opp, c) -> float | None:
        """Roughly the model's price: the campaign's click value times an estimated click rate
        (the market's, less the user's hidden propensity), shaded in first price, capped at
        the max bid, lifted to the floor when the value covers it (``meet_floor``)."""
        from fleet.pipeline.enrichment import CONTEXTUAL_MULTIPLIER
        from fleet.sim.market import BASE_CTR_LOGIT, DEVICE_CTR, FORMAT_CTR, SIZE_CTR

        allowed = opp.user_level_allowed
        aff = allowed and bool(self.interests[c.id].intersection(opp.user.segments))
        x = (BASE_CTR_LOGIT + opp.publisher.quality + FORMAT_CTR[opp.fmt] + SIZE_CTR.get(opp.size, 0.0)
             + DEVICE_CTR.get(opp.user.device_type, 0.0) + 1.3 * aff + self.quality[c.id])
        value = c.strategy.base_cpm * (1.0 / (1.0 + math.exp(-x))) / 0.005
        if not allowed:
            value *= CONTEXTUAL_MULTIPLIER
        bid = min(value * (self.shade if opp.at == 1 else 1.0), c.strategy.max_bid)
        if bid >= opp.floor:
            return bid
        return opp.floor if min(value, c.strategy.max_bid) >= opp.floor else None

    def traffic(self, t: float) -> float:
        if self.probe_t0 <= t < self.probe_t1:
            return 1.0
        x = (t - self.start) / self.day_s
        return 1.0 - self.amp * math.cos(2 * math.pi * x) if 0 <= x < 1 else 0.0

    def auctions(self, t: float, dt: float) -> None:
        from fleet.sim.market import resolve

        f = self.traffic(t)
        if f <= 0:
            return
        rng = self.rng
        for region in self.names:
            b = self.budgets[region]
            for _ in range(self._poisson(self.rate * self.shares[region] * f * dt)):
                opp = self.market.opportunity(rng, region)
                best, best_bid = None, 0.0
                for c in self.eligible(opp):
                    if not b.allow(c, c.strategy.max_bid / 1000.0, t):
                        continue
                    bid = self.price(opp, c)
                    if bid is not None and bid > best_bid:
                        best, best_bid = c, bid
                day = t >= self.start
                if best is None:
                    if day:
                        self.records.append(SimpleNamespace(t=t - self.start, status=204, late=False, campaign_id=None))
                    continue
                self.seq += 1
                key = f"a{self.seq}:1"
                if not b.reserve(best, best_bid / 1000.0, t, key, until=t + self.bill_window_s):
                    if day:
                        self.records.append(SimpleNamespace(t=t - self.start, status=204, late=False, campaign_id=None))
                    continue
                self.bids += 1
                if rng.random() < 0.004:  # a late answer: a no-bid to the exchange, no notice ever
                    self.late_answers += 1
                    if day:
                        self.records.append(SimpleNamespace(t=t - self.start, status=200, late=True,
                                                            campaign_id=best.id, won=False, price=0.0))
                    continue
                won, clearing = resolve(best_bid, opp.competing, opp.floor, opp.at)
                if day:
                    self.records.append(SimpleNamespace(t=t - self.start, status=200, late=False, campaign_id=best.id,
                                                        won=won, price=clearing))
                if won:
                    if rng.random() < 0.97:  # rendered: billed
                        self._notice(t, region, "bill", key, best.id, clearing)
                else:
                    self._notice(t, region, "loss", key, best.id, None)

    def _notice(self, t, region, kind, key, cid, price):
        rng = self.rng
        if rng.random() < 0.05:  # dropped
            return
        due = t + rng.uniform(0.02, 0.15)
        if rng.random() < self.late_rate:
            due += rng.uniform(2.0, 10.0)
        auction, imp = key.split(":")
        n = SimpleNamespace(kind=kind, auction_id=auction, imp_id=imp, bid_id=key, campaign=cid, price=price,
                            flags=(), bid_ts_ms=int(t * 1000))
        for i in range(2 if rng.random() < 0.05 else 1):
            self.seq += 1
            heapq.heappush(self.events, (due + 0.2 * i, self.seq, region, n))

    def _poisson(self, lam: float) -> int:
        return poisson(self.rng, lam)

    def notices(self, t: float) -> None:
        while self.events and self.events[0][0] <= t:
            _, _, region, n = heapq.heappop(self.events)
            b = self.budgets[region]
            key = f"{n.auction_id}:{n.imp_id}"
            fresh = n.kind == "bill" and key not in b.settled
            b.settle(n, t)
            if fresh:  # the replica counts it; the stream has it; the ledger applies it a little later
                amount = n.price / 1000.0
                self.ledger_queue[region].append((t + (self.ledger_lag_s or 0.0), int(n.bid_ts_ms // 1000 // 86_400), n.campaign,
                                                  amount))
                self.charged.setdefault(n.campaign, []).append((t, amount))

    # -- control -------------------------------------------------------------------------

    def read_ledger(self, now: float) -> None:
        """As ``LedgerView.refresh``: each region's caught-up mark and spend hashes into the books
        (``ledger_lag_s`` None: no ledger, as control without Redis: the replicas' deltas only)."""
        if self.ledger_lag_s is None:
            return
        days = self.control.pacer.ledger_days(now)
        for region in self.names:
            q, led = self.ledger_queue[region], self.ledger[region]
            keep = []
            for e in q:
                if e[0] <= now:
                    h = led.setdefault(e[1], {})
                    h[e[2]] = h.get(e[2], 0.0) + e[3]
                else:
                    keep.append(e)
            self.ledger_queue[region] = keep
            self.control.pacer.merge_ledger(region, now - self.ledger_lag_s,
                                            {d: dict(led.get(d, {})) for d in days})

    async def sync(self, region: str, t: float) -> None:
        b = self.budgets[region]
        b.expire(t)
        rep = Report(region=region, replica=f"{region}-r1", ts=t, spend=_reported(b), reserved=dict(b.reserved),
                     opportunities=dict(b.opportunities), blocked=dict(b.blocked), throttled=dict(b.throttled),
                     units=dict(b.units))
        push = await self.control.sync(rep)
        b.apply(push.leases, push.epoch)

    async def restart_control(self) -> None:
        """The actor killed: a new incarnation from the state document it last wrote."""
        from fleet.control.service import Control

        doc = json.loads(json.dumps(self.control.to_dict()))
        fresh = Control(self.config, None, clock=self.clock)
        fresh.load(doc)
        fresh.epoch += 1
        self.control = fresh

    async def _put(self, cid: str, body: dict) -> None:
        status, out = await route(self.control, "PUT", f"/v1/campaigns/{cid}", body=json.dumps(body).encode())
        assert status == 200, out

    async def advance(self, until: float) -> None:
        """Run the world (auctions, notices, syncs, ticks, puts, samples) up to ``until``."""
        dt = self.dt
        while self.clock.t < until:
            t = self.clock.t
            up = t >= self.down_until
            if not up and t + dt >= self.down_until:
                await self.restart_control()
            while self.puts and self.puts[0][0] <= t and up:
                _, cid, body = self.puts.pop(0)
                await self._put(cid, body)
            self.notices(t)
            for region in self.names:
                if t >= self.next_sync[region]:
                    if up:
                        await self.sync(region, t)
                    self.next_sync[region] += 1.0
            if t >= self.next_tick:
                if up:
                    self.read_ledger(t)
                    await self.control.tick(1.0)
                self.next_tick += 1.0
            if t >= self.next_sample:
                if up:
                    self.samples.append((t, self.control.pacer.view(t)))
                self.next_sample += 2.0
            self.auctions(t, dt)
            self.clock.t = round(t + dt, 6)

    async def run(self) -> dict:
        from fleet.control.curve import Curve
        from fleet.sim.pacing import summarise

        t0 = self.clock.t
        # 1 the probe: an unconstraining flat flight; traffic from 2.5 s later
        for c in self.campaigns:
            await self._put(c.id, {"budget": 1e6, "start": t0, "end": t0 + self.probe_s + 5, "curve": "even",
                                   "daily": False})
        self.probe_t0, self.probe_t1 = t0 + 2.5, t0 + 2.5 + self.probe_s
        await self.advance(self.probe_t1)
        while self.events:  # the exchanges send every pending notice before the probe's run returns
            await self.advance(self.clock.t + 0.5)
        await self.advance(self.clock.t + 2.0)
        probe = self.control.pacer.view(self.clock.t)
        total_rate = sum(v["spent"] for v in probe.values() if v["budget"] >= 1e6) / self.probe_s
        opp = {c.id: sum(r["opp_rate"] for r in probe.get(c.id, {}).get("regions", {}).values())
               for c in self.campaigns}
        opp_total = sum(opp.values()) or 1.0
        # 2 the day: budgets as run_pacing sets them, put one by one (an HTTP write each)
        self.start = self.clock.t + 3.0
        weights = cosine_weights(self.amp)
        for i, c in enumerate(self.campaigns):
            self.budgets_set[c.id] = round(self.fill * total_rate * opp[c.id] / opp_total * self.day_s, 4)
            self.puts.append((self.clock.t + 0.03 * i, c.id, {
                "budget": self.budgets_set[c.id], "start": self.start, "end": self.start + self.day_s,
                "curve": "traffic", "weights": weights, "daily": False}))
        self.day_charged_from = self.clock.t
        self.next_sample = self.start
        if self.kill_s:
            await self.advance(self.start + self.day_s / 2)
            self.down_until = self.clock.t + self.kill_s
        await self.advance(self.start + self.day_s)
        end = self.clock.t + 8.0
        while self.events and self.clock.t < end + 10:
            await self.advance(self.clock.t + 0.5)
        await self.advance(max(self.clock.t, end) + 3.0)
        final = self.control.pacer.view(self.clock.t)
        curve = Curve(self.start, self.start + self.day_s, weights)
        self.curve = curve
        doc = summarise(self.records, self.samples, final, self.budgets_set, self.campaigns, curve, self.start,
                        self.day_s)
        doc["bids"], doc["late_answers"] = self.bids, self.late_answers
        doc["total_rate"] = total_rate
        return doc


async def run_day(seed: int, n: int = 50, day_s: float = 600.0, fill: float = 0.45, probe_s: float = 30.0,
                  live: bool = True) -> dict:
    from fleet.config import load_regions
    from fleet.control.service import Control

    clock = Clock()
    control = Control(load_regions(), None, clock=clock)
    await control.start()
    loop = Loop(clock, control, n=n, day_s=day_s, seed=seed, fill=fill, live=live, probe_s=probe_s)
    await loop.setup()
    await loop.run(loop.start + day_s + 15)
    rep = loop.report(skip_s=60.0)
    finals = rep["finals"].values()
    return {"seed": seed, "campaigns": len(rep["finals"]), "limited": len(loop.limited),
            "p90_all": round(rep["p90_all"], 4), "p90_from_60s": round(rep["p90_error"], 4),
            "final": [round(min(finals), 4), round(max(finals), 4)],
            "within_2pct": sum(1 for x in finals if abs(x - 1) <= 0.02),
            "bound_violations": loop.bound_violations, "max_breach": loop.max_breach,
            "median_error_at": {m: round(e, 3) for m, e in rep["median_by_mark"].items() if m <= 120}}


async def run_live(seed: int, day_s: float = 600.0, fill: float = 0.45, probe_s: float = 30.0,
                   kill_s: float | None = 3.0, bill_window_s: float = 30.0, ledger_lag_s: float = 0.5) -> dict:
    """One ``LiveRun``: the figures of ``fleet.sim.pacing.summarise`` (the live run's)."""
    from fleet.config import load_regions
    from fleet.control.service import Control

    clock = Clock()
    control = Control(load_regions(), None, clock=clock)
    await control.start()
    run = LiveRun(clock, control, seed=seed, day_s=day_s, probe_s=probe_s, fill=fill, kill_s=kill_s,
                  bill_window_s=bill_window_s, ledger_lag_s=ledger_lag_s)
    doc = await run.run()
    marks = doc["pacing_error_by_mark"]
    show = [m for m in marks if m <= 150 or m >= day_s - 30]
    return {"seed": seed, "pacing_error_p90": round(doc["pacing_error_p90"], 4),
            "by_mark": {m: [marks[m]["median"], marks[m]["p90"]] for m in show},
            "enough_traffic": doc["enough_traffic"], "cannot_spend": doc.get("cannot_spend"),
            **{k: doc[k] for k in ("within_2pct", "final_ratio", "over_budget_samples", "over_budget_samples_finalized",
                                   "lease_bound_breaches", "lease_bound_excess_max_bids",
                                   "in_figure_spent_nothing", "window_error_p90") if k in doc},
            "overspent": len(doc["overspent"]), "fleet_rate": round(doc["total_rate"], 4)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--campaigns", type=int, default=50)
    ap.add_argument("--day", type=float, default=600.0)
    ap.add_argument("--fill", type=float, default=0.45)
    ap.add_argument("--probe", type=float, default=30.0)
    ap.add_argument("--simple", action="store_true",
                    help="the per-campaign market of the tests (Loop, live=True) instead of the live run's "
                         "requests, auctions and notices (LiveRun)")
    ap.add_argument("--fixed-market", action="store_true",
                    help="with --simple: every bid wins 40%% at its price, no late notices")
    ap.add_argument("--kill-control", type=float, default=3.0, metavar="S",
                    help="control gone this long at mid-day, then restarted from its state (0: not killed)")
    ap.add_argument("--bill-window", type=float, default=30.0,
                    help="seconds a reservation is held without a notice: the bid's deadline, the imps' exp "
                         "(the live run's say 30 s; without one, the ledger's bill_window_s, 900 s)")
    ap.add_argument("--ledger-lag", type=float, default=0.5, help="seconds from a replica's bill to the ledger's")
    a = ap.parse_args()
    p90s = []
    for s in a.seeds:
        if a.simple or a.fixed_market:
            doc = asyncio.run(run_day(s, a.campaigns, a.day, a.fill, a.probe, not a.fixed_market))
            p90s.append(doc["p90_all"])
        else:
            doc = asyncio.run(run_live(s, a.day, a.fill, a.probe, a.kill_control or None, a.bill_window, a.ledger_lag))
            p90s.append(doc["pacing_error_p90"])
        print(json.dumps(doc), flush=True)
    print(f"pacing error p90 over seeds {a.seeds}: {[round(x, 4) for x in p90s]}", flush=True)


if __name__ == "__main__":
    main()
