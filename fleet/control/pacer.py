"""Budget pacing at the centre: flights, regional slices, leases, and a throttle.

A campaign's flight budget follows its delivery curve. Each control interval the pacer sets,
per campaign and region, the spend rate still needed (what is left, spread over what is left of
the curve, plus the gap between plan and spend to date closed over ``catchup_s``) times the
region's share of the campaign's eligible opportunities. Replicas hold leases: the most they may
newly commit until the lease expires. A lease covers the replica's reservations in flight plus
its share of the plan for the next horizon, and never more than the budget minus what is spent
(the ledger's finalized spend plus what replicas reported that it may not hold yet:
``fleet.control.spend``) and what other leases may still commit (a lapsed one until its bids can
no longer bill), so spend can never pass the budget by construction.
A participation probability (throttle) per campaign and region spreads a replica's lease over
the interval rather than spending it at once. It is set forward from what is observed, the
target rate over the eligible opportunity rate times the spend per participation, not walked
there from a fixed start: the right value ranges over decades, and every interval spent on the
way is an early overspend that stays in the spend to date. The gap to plan in the target is the
feedback that corrects what the estimate misses. A campaign that keeps exhausting its leases
(hot) gets shorter ones; one ahead of where the plan will be when its lease is renewed gets a
throttle of 0 until it is not (whatever the estimate says: a new flight's first seconds run on
what the last flight taught). The plan steers by the spend estimate, not the count the cap uses
(``fleet.control.spend``).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import asdict

from fleet.control import failover, standin
from fleet.control.flight import DAY_S, Flight  # noqa: F401 (re-exported)
from fleet.control.messages import Lease, Report
from fleet.control.records import (CampaignPace, LeaseRec, PacingSettings, RegionPace,  # noqa: F401
                                   ReplicaBook, _delta, _known)
from fleet.control.spend import SpendBook


class Pacer:
    def __init__(self, settings: PacingSettings, priors: dict[str, float], clock=time.time):
        self.s = settings
        self.priors = priors  # region -> budget share, used before opportunities are seen
        self.clock = clock
        self.campaigns: dict[str, CampaignPace] = {}
        self.seen: dict[str, dict[int, dict[str, float]]] = {}  # region -> day -> the ledger's last read
        self.leases: dict[str, LeaseRec] = {}  # "campaign|replica" -> the replica's live lease
        # "campaign|replica" -> the lease the replica last said it holds, while the one that
        # replaced it is unconfirmed: its reply may have been lost (``confirm``)
        self.prior: dict[str, LeaseRec] = {}
        self.replicas: dict[str, ReplicaBook] = {}
        self._ids = itertools.count(1)
        self.incarnation = f"{int(clock()):x}{os.urandom(3).hex()}"  # lease ids never repeat across restarts
        # Near the end, plan this far ahead: the last bids' notices arrive after the flight
        # ends, and a flight should end spent, not with its last intervals' worth left over.
        self.lead = 2 * settings.interval_s
        # Lost region -> the region that took its traffic (``fleet.control.failover``): its share
        # of every plan is the heir's until it reports again. ``heir_base``: "campaign|heir" -> the
        # heir's opportunity rate before it took any lost region's traffic.
        self.heirs: dict[str, str] = {}
        self.heir_base: dict[str, float] = {}

    # -- campaigns --------------------------------------------------------------------

    def put_flight(self, f: Flight) -> CampaignPace:
        cp = self.campaigns.get(f.campaign)
        if cp is None:
            cp = self.campaigns[f.campaign] = CampaignPace(f, self._book(f))
        else:
            if (f.start, f.end) != (cp.flight.start, cp.flight.end):  # a new flight starts at zero
                cp.book = self._book(f)
                self._restart(cp)
            cp.flight = f
        return cp

    def _book(self, f: Flight) -> SpendBook:
        """A new flight's books. Starting mid-day, what the ledger last showed for the campaign
        that day is an earlier flight's: left out (``base``). None read yet: the day counts whole."""
        day = int(f.start // DAY_S)
        if f.start <= day * DAY_S:
            return SpendBook()
        return SpendBook(base={r: days[day][f.campaign] for r, days in self.seen.items()
                               if f.campaign in days.get(day, {})})

    def _restart(self, cp: CampaignPace) -> None:
        """A new flight's controller starts afresh; what was learnt of the market stays (see
        ``tick`` for spend per participation)."""
        for rp in cp.regions.values():
            rp.actual_rate, rp.carried = 0.0, True

    def roll_days(self, now: float) -> None:
        """A daily flight that ended starts the next UTC day with the same budget."""
        for cp in self.campaigns.values():
            f = cp.flight
            if f.daily and now >= f.end:
                cp.days.append({"start": f.start, "budget": f.budget, "spent": round(cp.spent, 6)})
                del cp.days[:-7]
                day = now - now % DAY_S
                budget = f.budget if f.day_budget is None else f.day_budget  # after a partial first day
                cp.flight = Flight(f.campaign, budget, day, day + DAY_S, f.curve, f.weights, f.paused, True)
                cp.book = SpendBook()
                self._restart(cp)

    # -- reports and leases -------------------------------------------------------------

    def fresh(self, r: Report) -> bool:
        """Is this the replica's newest report? One overtaken by a later one (a sync timed out at the
        replica and delivered late, a duplicate) must not move its books or its leases: its totals
        are older and its ``held`` names a lease since replaced. Counted once, in order."""
        book = self.replicas.get(r.replica)
        if r.seq <= 0 or book is None:
            return True
        if r.seq <= book.seq:
            return False
        book.seq = r.seq
        return True

    def absorb(self, r: Report, now: float) -> None:
        """Spend and opportunities from a replica's report (cumulative: retries count once)."""
        book = self.replicas.get(r.replica)
        if book is None:
            book = self.replicas[r.replica] = ReplicaBook(r.region, seq=r.seq)
        book.last_seen = now
        for cid in r.spend:
            d = _delta(r.spend, book.spend, cid)
            cp = self.campaigns.get(cid)
            if d <= 0 or cp is None:
                continue
            cp.book.add(r.region, d, now)
            cp.region(r.region, self.s.p_start).spend_tick += d
            key = f"{cid}|{r.replica}"
            for lease in {id(x): x for x in (self.leases.get(key), self.prior.get(key)) if x}.values():
                lease.used += d
        blocked = {cid: int(_delta(r.blocked, book.blocked, cid)) for cid in r.blocked}
        throttled = {cid: int(_delta(r.throttled, book.throttled, cid)) for cid in r.throttled}
        for cid in r.opportunities:  # a candidate blocked or throttled was counted eligible first
            d = int(_delta(r.opportunities, book.opp, cid))
            book.opp_tick[cid] = book.opp_tick.get(cid, 0) + d
            cp = self.campaigns.get(cid)
            if cp is None:
                continue
            rp = cp.region(r.region, self.s.p_start)
            rp.opp_tick += d
            rp.blocked_tick += blocked.get(cid, 0)
            if r.throttled:
                rp.throttled_tick += throttled.get(cid, 0)
            else:  # a replica that does not count them (an older version): expected from the throttle
                rp.throttled_tick += max(0, d - blocked.get(cid, 0)) * (1.0 - rp.throttle)
            rp.unit = max(rp.unit, r.units.get(cid, 0.0))

    def _lead(self, f: Flight, now: float) -> float:
        return self.lead if f.end - now < 10 * self.s.interval_s else 0.0

    def outstanding(self, cid: str, exclude: str | None = None) -> float:
        """What the campaign's leases may still commit or bill: live ones, and lapsed ones (a
        replica gone, SIGKILLed or renewed elsewhere) until ``hold_s`` after they expired, as long
        as a bid made under them may still bill."""
        keys = {k for book in (self.leases, self.prior) for k, l in book.items() if l.campaign == cid}
        keys.discard(exclude)
        return sum(self.counted(k) for k in keys)

    def counted(self, key: str) -> float:
        """What one "campaign|replica" may still commit or bill: the larger of its two leases."""
        return max(l.outstanding() for l in (self.leases.get(key), self.prior.get(key)) if l)

    def confirm(self, cid: str, key: str, r: Report) -> None:
        """Which lease a replica spends under is the one it says it holds, not the last one control
        granted: a reply lost on the way leaves it with the earlier one. So a lease it holds stays
        counted (``prior``; the replica's commitments are the larger of the two) until a report
        names its successor, or nothing. A replica that does not say (``held`` None): as granted."""
        if r.held is None:
            self.prior.pop(key, None)
            return
        held, cur, prior = r.held.get(cid), self.leases.get(key), self.prior.get(key)
        if cur is not None and held == cur.id:
            self.prior[key] = cur
        elif not standin.held_unsaved(self, key, held, cur, prior) and (
                held is None or prior is None or held != prior.id):
            self.prior.pop(key, None)

    def set_heirs(self, heirs: dict[str, str]) -> None:
        """Lost region -> heir (``fleet.control.failover``), each interval. A region becoming an
        heir has its opportunity rates noted first (``heir_base``), so the traffic it takes over is
        counted once. (Control calls a region lost within ``health_stale_s``, before the DNS moves
        its exchanges: three failed checks ten seconds apart, then the records' TTL.)"""
        busy = {b.region for b in self.replicas.values() if any(n > 0 for n in b.opp_tick.values())}
        heirs = failover.held(self.heirs, heirs, busy)  # back, but its exchanges not yet: kept
        for heir in set(heirs.values()) - set(self.heirs.values()):
            for cid, cp in self.campaigns.items():
                rp = cp.regions.get(heir)
                self.heir_base[f"{cid}|{heir}"] = rp.opp_rate if rp is not None else 0.0
        self.heirs = dict(heirs)
        self.heir_base = {k: v for k, v in self.heir_base.items() if k.rsplit("|", 1)[1] in self.heirs.values()}

    def _region_share(self, cp: CampaignPace, region: str) -> float:
        """The region's share of the campaign's plan, by its eligible opportunity rate (before any
        is seen, the prior ``budget_share``); a lost region's goes to its heir."""
        rates = {n: rp.opp_rate for n, rp in cp.regions.items()}
        total = sum(rates.values())
        if not self.heirs:
            return (rates.get(region, 0.0) / total) if total > 0 else self.priors.get(region, 0.0)
        if total <= 0:
            return failover.shares(self.priors, self.heirs, {}).get(region, 0.0)
        keys = {h: f"{cp.flight.campaign}|{h}" for h in self.heirs.values()}
        base = {h: self.heir_base[k] for h, k in keys.items() if k in self.heir_base}
        return failover.shares(rates, self.heirs, base).get(region, 0.0)

    def _replica_share(self, cid: str, region: str, replica: str, now: float) -> float:
        live = [(n, b) for n, b in self.replicas.items()
                if b.region == region and now - b.last_seen <= self.s.lease_ttl_s]
        if not live:
            return 1.0
        total = sum(b.opp_rate.get(cid, 0.0) for _, b in live)
        if total <= 0:
            return 1.0 / len(live)
        return self.replicas[replica].opp_rate.get(cid, 0.0) / total if replica in self.replicas else 0.0

    def grant(self, r: Report, now: float) -> dict[str, Lease]:
        """Fresh leases for every campaign in flight; each replaces the replica's previous one.
        Whatever the cap, a lease covers the replica's own reservations (bids that may still
        bill): they count against the campaign until ``hold_s`` after it expires."""
        out: dict[str, Lease] = {}
        for cid, cp in self.campaigns.items():
            f = cp.flight
            key = f"{cid}|{r.replica}"
            self.confirm(cid, key, r)
            held = r.reserved.get(cid, 0.0)
            if f.paused or not f.start <= now < f.end:
                if held > 0:  # no lease to push, but its bids in flight still count
                    self.leases[key] = LeaseRec(f"{self.incarnation}-{next(self._ids)}", cid, r.region, r.replica,
                                                held, now, now + self.s.lease_ttl_s)
                else:
                    self.leases.pop(key, None)
                continue
            rp = cp.region(r.region, self.s.p_start)
            horizon = self.s.lease_horizon_s * (0.5 if rp.hot else 1.0)
            remaining = max(0.0, f.budget - cp.spent)
            need = self._plan(cp, now, horizon)
            share = self._region_share(cp, r.region) * self._replica_share(cid, r.region, r.replica, now)
            want = held + need * share * self.s.headroom
            # A lease smaller than a bid buys nothing, and bids in flight hold their whole price
            # until a notice settles them: a replica with opportunities gets two bids' worth
            # over the plan, and the throttle spaces the bids out.
            if share > 0 and cid in r.units:
                want += 2 * r.units[cid]
            cap = remaining - self.outstanding(cid, exclude=key)
            amount = max(held, min(want, cap))  # below ``held`` the replica cannot commit anything new
            rec = LeaseRec(f"{self.incarnation}-{next(self._ids)}", cid, r.region, r.replica, amount, now,
                           now + self.s.lease_ttl_s)
            self.leases[key] = rec
            # Ahead of where the plan will be when this lease is renewed, the campaign takes part
            # nowhere until it is: with a throttle set too high (a new flight's first seconds on
            # what an earlier flight taught, a burst of late bills read as a shortfall) the two
            # bids' worth of slack on every replica spent several bids at once, where the plan at
            # a day's trough is a fraction of one a second. The lease stays as sized (the money
            # side is unchanged); the pushed throttle is what stops.
            ahead = cp.book.estimate >= f.budget * f.shape().fraction(now + horizon + self._lead(f, now))
            out[cid] = Lease(id=rec.id, campaign=cid, amount=amount, expires_at=rec.expires_at,
                             throttle=0.0 if ahead else rp.throttle)
        return out

    # -- the control interval -----------------------------------------------------------

    def _plan(self, cp: CampaignPace, now: float, horizon: float) -> float:
        """What the campaign should spend over the next ``horizon``: its share of what is left
        (the catch-up plan) plus the gap between plan and spend to date, closed over ``catchup_s``
        (ahead, down to nothing; behind, up to twice the plan).
        The catch-up plan alone spreads a gap over the rest of the flight, so an early excess or
        shortfall would stay in the spend to date for most of it."""
        f = cp.flight
        t = max(now, f.start)
        shape = f.shape()
        spent = cp.book.estimate  # the lease cap counts ``cp.spent`` (fleet.control.spend)
        remaining = max(0.0, f.budget - spent)
        gap = f.budget * shape.fraction(t) - spent
        plan = remaining * shape.to_come(t + self._lead(f, t), horizon)
        # Behind, at most twice the plan: no burst after an outage (leases ran out, spend stopped).
        return plan + max(-plan, min(plan, gap * horizon / self.s.catchup_s))

    def _fleet_ratio(self) -> float:
        """Spend per participation as a share of the max bid, over every campaign and region:
        the prior for a campaign with little evidence of its own."""
        spend = asked = 0.0
        units = []
        for cp in self.campaigns.values():
            for rp in cp.regions.values():
                if rp.unit > 0:
                    spend, asked = spend + rp.spend_w, asked + rp.part_w * rp.unit
                    units.append(rp.unit)
        if not units:
            return self.s.value_prior
        w = self.s.value_weight * sum(units) / len(units)
        return (spend + w * self.s.value_prior) / (asked + w)

    def tick(self, now: float, dt: float) -> None:
        self.roll_days(now)
        a = self.s.ewma
        keep = math.exp(-dt / self.s.value_s)
        # An interval in which a region saw no opportunity at all, for any campaign (no traffic:
        # the gap between a run's probe and its day, an exchange gone quiet), says nothing of each
        # campaign's rate when traffic comes back: the rates stand. Decayed towards nothing, they
        # set every throttle wide open (target / (rate x value)) for the first seconds of traffic.
        busy = {b.region for b in self.replicas.values() if any(n > 0 for n in b.opp_tick.values())}
        for book in self.replicas.values():
            if book.region in busy:
                for cid, n in book.opp_tick.items():
                    book.opp_rate[cid] = (1 - a) * book.opp_rate.get(cid, 0.0) + a * n / dt
            book.opp_tick = {}
        w = self.s.value_weight
        for cp in self.campaigns.values():
            for rp in cp.regions.values():
                rp.spend_w = keep * rp.spend_w + rp.spend_tick
                rp.part_w = keep * rp.part_w + rp.part_prev
                rp.part_prev = max(0, rp.opp_tick - rp.blocked_tick - rp.throttled_tick)
                if rp.carried and now >= cp.flight.start:
                    # A new flight keeps what a participation spent before only as a prior:
                    # other campaigns' throttles changed with their flights too, and with them
                    # what a participation wins. Cut at the start, once the last flight's bills are in.
                    if rp.part_w > w:
                        rp.spend_w, rp.part_w = rp.spend_w * w / rp.part_w, w
                    rp.carried = False
        ratio = self._fleet_ratio()
        for cid, cp in self.campaigns.items():
            f = cp.flight
            # Steered from an interval before the start, so its first leases carry a throttle set for it.
            steer = not f.paused and f.start - dt <= now < f.end
            rate = self._plan(cp, now, dt) / dt if steer else 0.0
            unit = max((rp.unit for rp in cp.regions.values()), default=0.0)
            # Spend per participation: the campaign's own over all regions, shrunk towards the fleet's.
            pooled = ((sum(rp.spend_w for rp in cp.regions.values()) + w * ratio * unit)
                      / (sum(rp.part_w for rp in cp.regions.values()) + w))
            for name, rp in cp.regions.items():
                if name in busy:
                    rp.opp_rate = (1 - a) * rp.opp_rate + a * rp.opp_tick / dt
                rp.target_rate = rate * self._region_share(cp, name)
                rp.actual_rate = (1 - a) * rp.actual_rate + a * rp.spend_tick / dt  # shown, and for hot
                blocked = rp.blocked_tick / rp.opp_tick if rp.opp_tick else 0.0
                rp.hot = blocked > 0.2 and rp.actual_rate >= rp.target_rate  # at plan, and wanting more
                value = (rp.spend_w + w * pooled) / (rp.part_w + w)
                if steer and value > 0 and rp.opp_rate > 0:
                    # The share of eligible opportunities that spends the target: no walk from a
                    # fixed start (the right value ranges over decades); the gap to plan in the
                    # target is the feedback that corrects what the estimate misses.
                    rp.throttle = min(1.0, max(self.s.p_min, rp.target_rate / (rp.opp_rate * value)))
                rp.spend_tick, rp.opp_tick, rp.blocked_tick, rp.throttled_tick = 0.0, 0, 0, 0.0
        # Leases gone quiet are forgotten once their reservations have had time to settle.
        for book in (self.leases, self.prior):
            for key in [k for k, l in book.items() if now > l.expires_at + self.s.hold_s]:
                del book[key]
        for name in [n for n, b in self.replicas.items() if now - b.last_seen > 3600]:
            del self.replicas[name]

    # -- views and persistence ----------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "campaigns": {cid: {"flight": asdict(cp.flight), "spent": cp.spent, "by_region": cp.by_region,
                                "book": cp.book.to_dict(),
                                "regions": {n: asdict(rp) for n, rp in cp.regions.items()}, "days": cp.days}
                          for cid, cp in self.campaigns.items()},
            "leases": {k: asdict(l) for k, l in self.leases.items()},
            "prior": {k: asdict(l) for k, l in self.prior.items()},
            "replicas": {n: asdict(b) for n, b in self.replicas.items()},
            "heirs": dict(self.heirs), "heir_base": dict(self.heir_base),
        }

    def load(self, doc: dict) -> None:
        now = self.clock()
        for cid, c in doc.get("campaigns", {}).items():
            # Written before control read the ledger: the replicas' totals, counted until the
            # ledger has caught up past this start.
            book = SpendBook.from_dict(c["book"]) if "book" in c else SpendBook.legacy(c.get("by_region", {}), now)
            self.campaigns[cid] = CampaignPace(_known(Flight, c["flight"]), book,
                                               {n: _known(RegionPace, rp) for n, rp in c["regions"].items()},
                                               c.get("days", []))
        self.leases = {k: LeaseRec(**l) for k, l in doc.get("leases", {}).items()}
        self.prior = {k: LeaseRec(**l) for k, l in doc.get("prior", {}).items()}
        self.replicas = {n: _known(ReplicaBook, b) for n, b in doc.get("replicas", {}).items()}
        self.heirs, self.heir_base = dict(doc.get("heirs", {})), dict(doc.get("heir_base", {}))
