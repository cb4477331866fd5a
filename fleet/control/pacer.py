"""Budget pacing at the centre: flights, regional slices, leases, and a PI throttle.

A campaign's flight budget follows its delivery curve. Each control interval the pacer sets,
per campaign and region, the spend rate still needed (what is left, spread over what is left of
the curve, so a campaign behind plan catches up gradually) times the region's share of the
campaign's eligible opportunities. Replicas hold leases: the most they may newly commit until
the lease expires. A lease covers the replica's reservations in flight plus its share of the
plan for the next horizon, and never more than the budget minus what is spent and what other
live leases may still commit, so spend can never pass the budget by construction. A PI
controller on the spend-rate error sets a participation probability (throttle) per campaign and
region, so a replica spreads its lease over the interval rather than spending it at once; a
campaign that keeps exhausting its leases (hot) gets shorter ones.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field

from fleet.control.curve import Curve
from fleet.control.messages import Lease, Report

DAY_S = 86_400.0


@dataclass
class PacingSettings:
    interval_s: float = 1.0  # control tick, and how often replicas report and renew
    lease_ttl_s: float = 5.0  # control unreachable this long: the replica's spending stops
    lease_horizon_s: float = 2.0  # plan covered by a lease (hot campaigns: half)
    headroom: float = 1.1  # over the plan, so a replica is not starved by rounding
    hold_s: float = 30.0  # a reservation without notice is released after this
    kp: float = 0.5  # PI gains on the log of the throttle, per control interval
    ki: float = 0.3
    p_min: float = 0.0005
    p_start: float = 0.2
    ewma: float = 0.3  # weight of the newest interval in opportunity rates


@dataclass
class Flight:
    campaign: str
    budget: float  # fleet currency
    start: float
    end: float
    curve: str = "traffic"  # even | traffic
    weights: list[float] | None = None  # traffic shape over the flight (default: a diurnal day)
    paused: bool = False
    daily: bool = False  # renews every UTC day with the same budget

    def shape(self) -> Curve:
        from fleet.control.curve import DIURNAL

        if self.curve == "even":
            return Curve(self.start, self.end)
        return Curve(self.start, self.end, self.weights or DIURNAL)


@dataclass
class LeaseRec:
    id: str
    campaign: str
    region: str
    replica: str
    amount: float
    issued: float
    expires_at: float
    used: float = 0.0  # spend reported against it since it was issued

    def outstanding(self) -> float:
        return max(0.0, self.amount - self.used)


@dataclass
class RegionPace:
    throttle: float = 0.5
    err_prev: float = 0.0
    opp_rate: float = 0.0  # eligible opportunities per second (EWMA)
    spend_tick: float = 0.0  # since the last tick
    opp_tick: int = 0
    blocked_tick: int = 0
    target_rate: float = 0.0
    actual_rate: float = 0.0
    hot: bool = False


@dataclass
class CampaignPace:
    flight: Flight
    spent: float = 0.0
    by_region: dict[str, float] = field(default_factory=dict)
    regions: dict[str, RegionPace] = field(default_factory=dict)
    days: list[dict] = field(default_factory=list)  # finished daily flights: {start, budget, spent}

    def region(self, name: str, p_start: float) -> RegionPace:
        r = self.regions.get(name)
        if r is None:
            r = self.regions[name] = RegionPace(throttle=p_start)
        return r


@dataclass
class ReplicaBook:
    region: str
    spend: dict[str, float] = field(default_factory=dict)  # last cumulative totals seen
    opp: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, int] = field(default_factory=dict)
    opp_tick: dict[str, int] = field(default_factory=dict)
    opp_rate: dict[str, float] = field(default_factory=dict)
    last_seen: float = 0.0


def _delta(totals: dict, seen: dict, key: str) -> float:
    """Growth of a cumulative figure since the last report (a new replica starts at zero)."""
    new = totals.get(key, 0)
    d = new - seen.get(key, 0)
    seen[key] = new
    return d if d > 0 else 0


class Pacer:
    def __init__(self, settings: PacingSettings, priors: dict[str, float], clock=time.time):
        self.s = settings
        self.priors = priors  # region -> budget share, used before opportunities are seen
        self.clock = clock
        self.campaigns: dict[str, CampaignPace] = {}
        self.leases: dict[str, LeaseRec] = {}  # "campaign|replica" -> the replica's live lease
        self.replicas: dict[str, ReplicaBook] = {}
        self._ids = itertools.count(1)
        self.incarnation = f"{int(clock()):x}"
        # Near the end, plan this far ahead: the last bids' notices arrive after the flight
        # ends, and a flight should end spent, not with its last intervals' worth left over.
        self.lead = 2 * settings.interval_s

    # -- campaigns --------------------------------------------------------------------

    def put_flight(self, f: Flight) -> CampaignPace:
        cp = self.campaigns.get(f.campaign)
        if cp is None:
            cp = self.campaigns[f.campaign] = CampaignPace(f)
        else:
            if (f.start, f.end) != (cp.flight.start, cp.flight.end):  # a new flight starts at zero
                cp.spent, cp.by_region = 0.0, {}
            cp.flight = f
        return cp

    def roll_days(self, now: float) -> None:
        """A daily flight that ended starts the next UTC day with the same budget."""
        for cp in self.campaigns.values():
            f = cp.flight
            if f.daily and now >= f.end:
                cp.days.append({"start": f.start, "budget": f.budget, "spent": round(cp.spent, 6)})
                del cp.days[:-7]
                day = now - now % DAY_S
                cp.flight = Flight(f.campaign, f.budget, day, day + DAY_S, f.curve, f.weights, f.paused, True)
                cp.spent, cp.by_region = 0.0, {}

    # -- reports and leases -------------------------------------------------------------

    def absorb(self, r: Report, now: float) -> None:
        """Spend and opportunities from a replica's report (cumulative: retries count once)."""
        book = self.replicas.get(r.replica)
        if book is None:
            book = self.replicas[r.replica] = ReplicaBook(r.region)
        book.last_seen = now
        for cid in r.spend:
            d = _delta(r.spend, book.spend, cid)
            cp = self.campaigns.get(cid)
            if d <= 0 or cp is None:
                continue
            cp.spent += d
            cp.by_region[r.region] = cp.by_region.get(r.region, 0.0) + d
            cp.region(r.region, self.s.p_start).spend_tick += d
            lease = self.leases.get(f"{cid}|{r.replica}")
            if lease is not None:
                lease.used += d
        for cid in r.opportunities:
            d = int(_delta(r.opportunities, book.opp, cid))
            book.opp_tick[cid] = book.opp_tick.get(cid, 0) + d
            cp = self.campaigns.get(cid)
            if cp is not None:
                cp.region(r.region, self.s.p_start).opp_tick += d
        for cid in r.blocked:
            d = int(_delta(r.blocked, book.blocked, cid))
            cp = self.campaigns.get(cid)
            if cp is not None:
                cp.region(r.region, self.s.p_start).blocked_tick += d

    def _lead(self, f: Flight, now: float) -> float:
        return self.lead if f.end - now < 10 * self.s.interval_s else 0.0

    def outstanding(self, cid: str, exclude: str | None = None) -> float:
        """What live (and recently expired, reservations still settling) leases may still commit."""
        return sum(l.outstanding() for k, l in self.leases.items() if l.campaign == cid and k != exclude)

    def _region_share(self, cp: CampaignPace, region: str) -> float:
        total = sum(r.opp_rate for r in cp.regions.values())
        if total > 0:
            return cp.regions[region].opp_rate / total if region in cp.regions else 0.0
        return self.priors.get(region, 0.0)

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
        """Fresh leases for every campaign in flight; each replaces the replica's previous one."""
        out: dict[str, Lease] = {}
        for cid, cp in self.campaigns.items():
            f = cp.flight
            key = f"{cid}|{r.replica}"
            if f.paused or not f.start <= now < f.end:
                self.leases.pop(key, None)
                continue
            rp = cp.region(r.region, self.s.p_start)
            horizon = self.s.lease_horizon_s * (0.5 if rp.hot else 1.0)
            remaining = max(0.0, f.budget - cp.spent)
            need = remaining * f.shape().to_come(now + self._lead(f, now), horizon)
            share = self._region_share(cp, r.region) * self._replica_share(cid, r.region, r.replica, now)
            want = r.reserved.get(cid, 0.0) + need * share * self.s.headroom
            # A lease smaller than a bid buys nothing, and bids in flight hold their whole price
            # until a notice settles them: a replica with opportunities gets two bids' worth
            # over the plan, and the throttle spaces the bids out.
            if share > 0 and cid in r.units:
                want += 2 * r.units[cid]
            cap = remaining - self.outstanding(cid, exclude=key)
            amount = max(0.0, min(want, cap))
            rec = LeaseRec(f"{self.incarnation}-{next(self._ids)}", cid, r.region, r.replica, amount, now,
                           now + self.s.lease_ttl_s)
            self.leases[key] = rec
            out[cid] = Lease(id=rec.id, campaign=cid, amount=amount, expires_at=rec.expires_at,
                             throttle=rp.throttle)
        return out

    # -- the control interval -----------------------------------------------------------

    def tick(self, now: float, dt: float) -> None:
        self.roll_days(now)
        a = self.s.ewma
        for book in self.replicas.values():
            for cid, n in book.opp_tick.items():
                book.opp_rate[cid] = (1 - a) * book.opp_rate.get(cid, 0.0) + a * n / dt
            book.opp_tick = {}
        for cid, cp in self.campaigns.items():
            f = cp.flight
            active = not f.paused and f.start <= now < f.end
            remaining = max(0.0, f.budget - cp.spent)
            rate = remaining * f.shape().to_come(now + self._lead(f, now), dt) / dt if active else 0.0
            for name, rp in cp.regions.items():
                rp.opp_rate = (1 - a) * rp.opp_rate + a * rp.opp_tick / dt
                rp.target_rate = rate * self._region_share(cp, name)
                # Spend per interval comes in whole impressions: steer on a smoothed rate.
                rp.actual_rate = (1 - a) * rp.actual_rate + a * rp.spend_tick / dt
                blocked = rp.blocked_tick / rp.opp_tick if rp.opp_tick else 0.0
                rp.hot = blocked > 0.2 and rp.actual_rate >= rp.target_rate  # at plan, and wanting more
                if active and rp.target_rate > 0:
                    err = max(-1.0, min(1.0, (rp.target_rate - rp.actual_rate) / rp.target_rate))
                    if err < 0:  # ahead of plan and running into the lease: space bids out more
                        err -= blocked
                    # PI in the log of the probability: the right throttle ranges over decades
                    # (a small budget on abundant traffic needs 0.001, a starved one 1), and a
                    # step should be a fraction of where it is, not a fixed amount.
                    step = self.s.kp * (err - rp.err_prev) + self.s.ki * err
                    rp.throttle = min(1.0, max(self.s.p_min, rp.throttle * math.exp(step)))
                    rp.err_prev = err
                rp.spend_tick, rp.opp_tick, rp.blocked_tick = 0.0, 0, 0
        # Leases gone quiet are forgotten once their reservations have had time to settle.
        for key in [k for k, l in self.leases.items() if now > l.expires_at + self.s.hold_s]:
            del self.leases[key]
        for name in [n for n, b in self.replicas.items() if now - b.last_seen > 3600]:
            del self.replicas[name]

    # -- views and persistence ----------------------------------------------------------

    def view(self, now: float) -> dict:
        out = {}
        for cid, cp in self.campaigns.items():
            f = cp.flight
            planned = f.budget * f.shape().fraction(now)
            out[cid] = {
                "budget": f.budget, "start": f.start, "end": f.end, "curve": f.curve, "paused": f.paused,
                "spent": round(cp.spent, 6), "planned": round(planned, 6),
                "pacing_error": round((cp.spent - planned) / planned, 4) if planned > 0 else None,
                "outstanding": round(self.outstanding(cid), 6),
                "regions": {n: {"throttle": round(rp.throttle, 4), "opp_rate": round(rp.opp_rate, 3),
                                "target_rate": round(rp.target_rate, 6), "actual_rate": round(rp.actual_rate, 6),
                                "hot": rp.hot, "spent": round(cp.by_region.get(n, 0.0), 6)}
                            for n, rp in cp.regions.items()},
            }
        return out

    def to_dict(self) -> dict:
        return {
            "campaigns": {cid: {"flight": asdict(cp.flight), "spent": cp.spent, "by_region": cp.by_region,
                                "regions": {n: asdict(rp) for n, rp in cp.regions.items()}, "days": cp.days}
                          for cid, cp in self.campaigns.items()},
            "leases": {k: asdict(l) for k, l in self.leases.items()},
            "replicas": {n: asdict(b) for n, b in self.replicas.items()},
        }

    def load(self, doc: dict) -> None:
        for cid, c in doc.get("campaigns", {}).items():
            self.campaigns[cid] = CampaignPace(Flight(**c["flight"]), c["spent"], c["by_region"],
                                               {n: RegionPace(**rp) for n, rp in c["regions"].items()},
                                               c.get("days", []))
        self.leases = {k: LeaseRec(**l) for k, l in doc.get("leases", {}).items()}
        self.replicas = {n: ReplicaBook(**b) for n, b in doc.get("replicas", {}).items()}
