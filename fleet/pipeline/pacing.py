"""Stage 4, pacing: may this campaign spend here, now; reserve the tentative spend if so.

Until the control actor hands out leases, each replica holds a local allowance: the campaign's
daily budget times the region's share, split across the region's replicas, released evenly over
the day (with a small burst allowance) so a campaign cannot burn its day in the first minute.
Reservations are tentative spend at the bid price; the ledger later finalises or releases them.
Frequency caps count per user and campaign on bids until the ledger counts impressions.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from fleet.campaigns.catalog import Campaign

DAY_S = 86_400.0


class LocalBudget:
    """Even-delivery allowance per campaign for one replica."""

    def __init__(self, share: float, burst_s: float = 300.0, clock=time.time):
        self.share = share
        self.burst_s = burst_s
        self.clock = clock
        self.reserved: dict[str, tuple[int, float]] = {}  # campaign -> (UTC day, reserved)

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

    def reserve(self, c: Campaign, amount: float, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if not self.can_spend(c, amount, now):
            return False
        self.reserved[c.id] = (int(now // DAY_S), self._spent(c.id, now) + amount)
        return True

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
