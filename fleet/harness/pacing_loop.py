"""Control's pacing loop in-process: control, three regions' lease budgets and a seeded market on
a simulated clock (no Ray, no HTTP), so pacing figures can be checked exactly and quickly.

The closed loop is the code the fleet runs (``Control.sync``/``tick``, ``LeaseBudget``); only the
auctions are drawn here. ``tests/test_control.py`` drives ``Loop`` (a market per campaign);
``fleet.harness.pacing_live`` runs the live pacing run request by request on the same clock.
"""

from __future__ import annotations

import heapq
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
