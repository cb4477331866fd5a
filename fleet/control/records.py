"""The pacer's records: its settings, leases, each campaign's pace (flight, books, per-region
figures) and each replica's last cumulative totals, and how a stored record is read back
(``fleet.control.pacer`` holds the logic)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from fleet.control.flight import Flight
from fleet.control.spend import SpendBook


@dataclass
class PacingSettings:
    interval_s: float = 1.0  # control tick, and how often replicas report and renew
    lease_ttl_s: float = 5.0  # control unreachable this long: the replica's spending stops
    lease_horizon_s: float = 2.0  # plan covered by a lease (hot campaigns: half)
    headroom: float = 1.1  # over the plan, so a replica is not starved by rounding
    hold_s: float = 3600.0  # a lease counts this long after it expired: a bid under it may still bill
    catchup_s: float = 10.0  # a gap between spend and plan to date is closed over about this long
    p_min: float = 0.0005
    p_start: float = 0.2  # before anything is known of the campaign's opportunities
    ewma: float = 0.3  # weight of the newest interval in opportunity rates
    value_s: float = 30.0  # spend per participation is averaged over about this long
    value_prior: float = 0.5  # spend per participation, as a share of the max bid, before any is seen
    value_weight: float = 10.0  # a prior counts as this many participations


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
    opp_rate: float = 0.0  # eligible opportunities per second (EWMA)
    spend_tick: float = 0.0  # since the last tick
    opp_tick: int = 0
    blocked_tick: int = 0
    throttled_tick: float = 0.0  # expected, where a replica does not count them
    target_rate: float = 0.0
    actual_rate: float = 0.0
    hot: bool = False
    # Spend per participating opportunity: decayed sums of spend and of participations (each
    # counted a tick late, as bills come after bids), and the largest bid asked (max bid).
    spend_w: float = 0.0
    part_w: float = 0.0
    part_prev: float = 0.0
    unit: float = 0.0
    carried: bool = False  # the sums are from an earlier flight


@dataclass
class CampaignPace:
    flight: Flight
    book: SpendBook = field(default_factory=SpendBook)  # the flight's spend (fleet.control.spend)
    regions: dict[str, RegionPace] = field(default_factory=dict)
    days: list[dict] = field(default_factory=list)  # finished daily flights: {start, budget, spent}

    @property
    def spent(self) -> float:
        """The flight's spend: the ledger's finalized spend plus what replicas reported that the
        ledger may not hold yet (``SpendBook``)."""
        return self.book.total

    @property
    def by_region(self) -> dict[str, float]:
        return self.book.by_region()

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
    throttled: dict[str, int] = field(default_factory=dict)
    opp_tick: dict[str, int] = field(default_factory=dict)
    opp_rate: dict[str, float] = field(default_factory=dict)
    last_seen: float = 0.0
    seq: int = 0  # the newest report applied (``Pacer.fresh``)


def _delta(totals: dict, seen: dict, key: str) -> float:
    """Growth of a cumulative figure since the last report (a new replica starts at zero)."""
    new = totals.get(key, 0)
    d = new - seen.get(key, 0)
    seen[key] = new
    return d if d > 0 else 0


def _known(cls, d: dict):
    """A dataclass from a stored document written by another version: fields it no longer has
    are dropped, new ones take their defaults (a restart across a deploy must not fail)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
