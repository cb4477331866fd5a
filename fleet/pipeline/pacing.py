"""Stage 4, pacing: may this campaign spend here, now; reserve the tentative spend if so.

Until the control actor hands out leases, each replica holds a local allowance: the campaign's
daily budget times the region's share, split across the region's replicas, released evenly over
the day (with a small burst allowance) so a campaign cannot burn its day in the first minute.
Reservations are tentative spend at the bid price; the ledger later finalises or releases them.
Frequency caps count per user and campaign on bids until the ledger counts impressions.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

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
    """Per (user, campaign) event times within the cap window; bounded number of users."""

    def __init__(self, max_keys: int = 500_000, clock=time.time):
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[tuple[str, str], deque] = OrderedDict()

    def count(self, user: str, cid: str, window_s: float, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        q = self._events.get((user, cid))
        if not q:
            return 0
        while q and now - q[0] > window_s:
            q.popleft()
        return len(q)

    def allowed(self, user: str | None, c: Campaign, now: float | None = None) -> bool:
        cap = c.freq_cap
        if cap is None or user is None:
            return True
        return self.count(user, c.id, cap.window_s, now) < cap.count

    def record(self, user: str | None, c: Campaign, now: float | None = None) -> None:
        if c.freq_cap is None or user is None:
            return
        key = (user, c.id)
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = deque()
            if len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        q.append(self.clock() if now is None else now)
