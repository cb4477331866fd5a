"""The live pacing run in-process: ``LiveRun`` replays ``fleet sim pacing --day 600 --rate 150
--fill 0.45 --kill-control`` (the pacing catalog, a flat probe flight, then a 600 s diurnal day with
budgets set from the probe) request by request against control and one ``LeaseBudget`` replica per
region on a simulated clock. ``python -m fleet.harness.pacing_live --seeds 1 2 3`` prints
``fleet.sim.pacing.summarise``'s figures per seed (``--simple``: ``pacing_loop.Loop``'s live-like
day).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import random
from types import SimpleNamespace

from fleet.control.api import route
from fleet.control.curve import cosine_weights
from fleet.control.ledger_view import ledger_days, merge_ledger
from fleet.control.messages import Report
from fleet.control.pace_view import pace_view
from fleet.harness.pacing_loop import Clock, _reported, poisson, run_day
from fleet.pipeline.pacing import LeaseBudget


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
        days = ledger_days(self.control.pacer, now)
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
            merge_ledger(self.control.pacer, region, now - self.ledger_lag_s,
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
                    self.samples.append((t, pace_view(self.control.pacer, t)))
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
        probe = pace_view(self.control.pacer, self.clock.t)
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
        final = pace_view(self.control.pacer, self.clock.t)
        curve = Curve(self.start, self.start + self.day_s, weights)
        self.curve = curve
        doc = summarise(self.records, self.samples, final, self.budgets_set, self.campaigns, curve, self.start,
                        self.day_s)
        doc["bids"], doc["late_answers"] = self.bids, self.late_answers
        doc["total_rate"] = total_rate
        return doc


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
