"""Stage 4, pacing: may this campaign spend here, now; reserve the tentative spend if so.

With the control actor (``LeaseBudget``) a replica spends only what it holds a live lease for:
each bid reserves its price against the lease, the notices settle it (bill: spend, loss:
released) and a reservation nobody settles is released at the bid's notice deadline, when no
bill can be accepted for it any more (``fleet.pipeline.respond.bill_window``).
Spend, reservations and opportunities go back to control in every report; a lease that is not
renewed expires and the campaign stops spending here. Without control (``LocalBudget``, tests
and single-box use) each replica holds the campaign's daily budget times the region's share,
released evenly over the UTC day. Frequency caps count per user and campaign.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from fleet.campaigns.model import Campaign
from fleet.pipeline.respond import bill_window

DAY_S = 86_400.0


class LocalBudget:
    """Even-delivery allowance per campaign for one replica."""

    def __init__(self, share: float, burst_s: float = 300.0, clock=time.time):
        self.share = share
        self.burst_s = burst_s
        self.clock = clock
        self.reserved: dict[str, tuple[int, float]] = {}  # campaign -> (UTC day, reserved)
        self._recent: dict[str, tuple[str, float]] = {}  # key -> (campaign, amount), newest last

    def allowance(self, c: Campaign, now: float) -> float:
        """Budget released so far today, plus ``burst_s`` worth of the even rate."""
        daily = c.budget_daily * self.share
        into_day = now % DAY_S
        return min(daily, daily * (into_day + self.burst_s) / DAY_S)

    def _spent(self, cid: str, now: float) -> float:
        # The day rolls over in UTC; a new day starts from zero.
        entry = self.reserved.get(cid)
        return entry[1] if entry is not None and entry[0] == int(now // DAY_S) else 0.0

    def can_spend(self, c: Campaign, amount: float, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return self._spent(c.id, now) + amount <= self.allowance(c, now)

    allow = can_spend

    def reserve(self, c: Campaign, amount: float, now: float | None = None, key: str | None = None,
                until: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if not self.can_spend(c, amount, now):
            return False
        self.reserved[c.id] = (int(now // DAY_S), self._spent(c.id, now) + amount)
        if key is not None:
            self._recent[key] = (c.id, amount)
            if len(self._recent) > 1024:
                self._recent.pop(next(iter(self._recent)))
        return True

    def release(self, key: str) -> None:
        """Undo a reservation made moments ago for a bid that did not leave (the deadline)."""
        held = self._recent.pop(key, None)
        if held is not None and held[0] in self.reserved:
            day, spent = self.reserved[held[0]]
            if spent - held[1] > 1e-12:
                self.reserved[held[0]] = (day, spent - held[1])
            else:
                del self.reserved[held[0]]

    def settle(self, notice, now: float | None = None) -> None:
        """The local allowance counts bids, not notices."""

    def spent_today(self, cid: str, now: float | None = None) -> float:
        return self._spent(cid, self.clock() if now is None else now)


class FrequencyCounter:
    """This replica's own exposures per (user, campaign), by event id, within the cap window.

    The cache shards hold the region's counts; these cover the gap until a shard has this
    replica's latest events (and the whole count when no cache is configured). The two are
    merged by event id, so an event both know of counts once.
    """

    def __init__(self, max_keys: int = 500_000, keep_s: float = 86_400.0, clock=time.time):
        self.max_keys = max_keys
        self.keep_s = keep_s
        self.clock = clock
        self._events: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()

    def count(self, user: str, cid: str, window_s: float, now: float | None = None,
              stored: tuple[tuple[str, float], ...] | None = None) -> int:
        now = self.clock() if now is None else now
        local = self._events.get((user, cid))
        if local:
            for eid in [e for e, ts in local.items() if now - ts > min(window_s, self.keep_s)]:
                del local[eid]
        if not stored:
            return len(local) if local else 0
        live = {eid for eid, ts in stored if now - ts <= window_s}
        if local:
            live.update(local)
        return len(live)

    def allowed(self, user: str | None, c: Campaign, now: float | None = None,
                stored: tuple[tuple[str, float], ...] | None = None) -> bool:
        cap = c.freq_cap
        if cap is None or user is None:
            return True
        return self.count(user, c.id, cap.window_s, now, stored) < cap.count

    def record(self, user: str | None, c: Campaign, now: float | None = None, eid: str | None = None) -> None:
        if c.freq_cap is None or user is None:
            return
        key = (user, c.id)
        evs = self._events.get(key)
        if evs is None:
            evs = self._events[key] = {}
            if len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        now = self.clock() if now is None else now
        evs[eid if eid is not None else f"local-{now!r}-{len(evs)}"] = now


@dataclass(slots=True)
class HeldLease:
    id: str
    amount: float
    expires_at: float
    throttle: float
    committed: float = 0.0  # reserved or spent under this lease since it was granted


class LeaseBudget:
    """A replica's budget under control's leases (see the module docstring)."""

    def __init__(self, hold_s: float = 30.0, clock=time.time, rng=random.random, max_settled: int = 200_000):
        self.hold_s = hold_s  # a reservation made without a deadline is held this long
        self.clock = clock
        self.rng = rng
        self.max_settled = max_settled
        self.leases: dict[str, HeldLease] = {}
        self.reserved: dict[str, float] = {}  # campaign -> held now
        self.holds: dict[str, tuple[str, float, float]] = {}  # key -> (campaign, amount, deadline)
        self._deadlines: list[tuple[float, str]] = []  # heap of (deadline, key); stale entries skipped
        self.settled: OrderedDict[str, None] = OrderedDict()  # billed keys: a resent bill counts once
        self.spend: dict[str, float] = {}  # campaign -> billed spend, cumulative
        self.spend_days: dict[int, dict[str, float]] = {}  # bid's UTC day -> campaign -> billed spend
        self.opportunities: Counter[str] = Counter()
        self.blocked: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self.units: dict[str, float] = {}  # campaign -> largest amount asked (a lease below it buys nothing)
        self.epoch = 0
        self._reported: dict[str, float] = {}  # spend as of the last report to control

    def mark_report(self) -> dict[str, float]:
        """The cumulative spend a report to control carries; the answer's leases are sized on it."""
        self._reported = dict(self.spend)
        return dict(self._reported)

    def held(self) -> dict[str, str]:
        """The leases this replica holds, by id: the report says which of control's it applied."""
        return {cid: lease.id for cid, lease in self.leases.items()}

    def apply(self, leases: dict, epoch: int) -> None:
        """New leases from control replace the old ones (their unspent part goes back). A lease
        covers the reservations in flight and the spend the report carried (control sized it
        with them), so they count against it, and so does every bill settled since the report:
        control has not counted those yet, and would grant their money twice."""
        since = {cid: v - self._reported.get(cid, 0.0) for cid, v in self.spend.items()}
        self.leases = {cid: HeldLease(l.id, l.amount, l.expires_at, l.throttle,
                                      self.reserved.get(cid, 0.0) + max(0.0, since.get(cid, 0.0)))
                       for cid, l in leases.items()}
        self.epoch = epoch

    def allow(self, c: Campaign, amount: float, now: float | None = None) -> bool:
        """May ``c`` take part in this auction with a bid of up to ``amount``? Counts the
        opportunity; refuses without a live lease, by the throttle, or when the lease is spent."""
        cid = c.id
        self.opportunities[cid] += 1
        if amount > self.units.get(cid, 0.0):
            self.units[cid] = amount
        lease = self.leases.get(cid)
        now = self.clock() if now is None else now
        if lease is None or now >= lease.expires_at or lease.committed + amount > lease.amount:
            self.blocked[cid] += 1
            return False
        if lease.throttle < 1.0 and self.rng() >= lease.throttle:
            self.throttled[cid] += 1
            return False
        return True

    def reserve(self, c: Campaign, amount: float, now: float | None = None, key: str | None = None,
                until: float | None = None) -> bool:
        """Hold ``amount`` of the lease for a bid leaving now (``key``: its bid id, which its
        notices carry signed) until its notice deadline ``until`` (without one, ``hold_s``)."""
        cid = c.id
        now = self.clock() if now is None else now
        lease = self.leases.get(cid)
        if lease is None or now >= lease.expires_at or lease.committed + amount > lease.amount:
            return False
        lease.committed += amount
        self.reserved[cid] = self.reserved.get(cid, 0.0) + amount
        if key is not None:
            deadline = now + self.hold_s if until is None else until
            self.holds[key] = (cid, amount, deadline)
            heapq.heappush(self._deadlines, (deadline, key))
        self.expire(now)
        return True

    def _unhold(self, key: str) -> tuple[str, float] | None:
        held = self.holds.pop(key, None)
        if held is None:
            return None
        cid, amount, _ = held
        self.reserved[cid] = max(0.0, self.reserved.get(cid, 0.0) - amount)
        lease = self.leases.get(cid)
        if lease is not None:
            lease.committed = max(0.0, lease.committed - amount)
        return cid, amount

    def release(self, key: str) -> None:
        self._unhold(key)

    def pin(self, key: str) -> None:
        """Keep a hold past its deadline: its bill was acknowledged but not counted yet (it
        waits in the spill file), so the money must stay held until it is."""
        held = self.holds.get(key)
        if held is not None:
            self.holds[key] = (held[0], held[1], math.inf)

    def settle(self, notice, now: float | None = None) -> None:
        """A bill spends its price and ends the hold, a loss releases it. A win changes nothing:
        the hold stays at our bid until the bill, so what a bid may still spend is always held
        (a bill above a win's price, or one without a price, stays inside the bound)."""
        if notice is None or "test" in notice.flags:
            return
        key = notice.bid_id
        if notice.kind == "loss":
            self._unhold(key)
        elif notice.kind == "bill" and notice.price is not None and key not in self.settled:
            self._unhold(key)
            spend = notice.price / 1000.0
            cid = notice.campaign
            self.spend[cid] = self.spend.get(cid, 0.0) + spend
            day = self.spend_days.setdefault(int(notice.bid_ts_ms // 1000 // DAY_S), {})
            day[cid] = day.get(cid, 0.0) + spend
            if len(self.spend_days) > 2:
                del self.spend_days[min(self.spend_days)]
            lease = self.leases.get(cid)
            if lease is not None:
                lease.committed += spend
            self.settled[key] = None
            if len(self.settled) > self.max_settled:
                self.settled.popitem(last=False)

    def expire(self, now: float) -> None:
        """Release reservations whose deadline passed without a bill (no bill is accepted after)."""
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            deadline, key = heapq.heappop(dl)
            held = self.holds.get(key)
            if held is not None and held[2] == deadline:
                self._unhold(key)

    def spent_today(self, cid: str, now: float | None = None) -> float:
        """Billed spend for bids made today (UTC), as this replica counted it."""
        now = self.clock() if now is None else now
        return self.spend_days.get(int(now // DAY_S), {}).get(cid, 0.0)


def reserve_winners(budget, winners: dict, imps: dict, bid_ids: dict, wall: float,
                    windows: tuple[float, float], test: bool, stats) -> list[str]:
    """Reserve each chosen bid's amount as it is chosen; drop a bid whose lease ran dry since
    targeting (concurrent requests) rather than overspend. A hold lasts until the bid's notice
    deadline, since a bill may come until then. Test requests and partners' bids reserve
    nothing. Returns the hold keys (bid ids) to release if the answer does not leave."""
    holds = []
    for imp_id, o in list(winners.items()):
        key = bid_ids[imp_id]
        if test or o.partner is not None:  # a partner's bid spends no budget of ours
            continue
        # What a bill may charge: our bid as its notice URL signs it (4 decimals of CPM).
        amount = max(o.price, round(o.price, 4)) / 1000.0
        if budget.reserve(o.campaign, amount, wall, key, until=wall + bill_window(imps[imp_id], *windows)):
            holds.append(key)
        else:
            del winners[imp_id]
            stats["pacing.lease_spent"] += 1
    return holds
