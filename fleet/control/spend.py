"""One spend: a flight's books at control converge on the ledger's finalized spend.

Per region, what a campaign's flight has spent is L + P:

- L, the ledger's finalized spend for the flight's UTC days (``fleet:<region>:ledger:spend:<day>``,
  by the bid's day, IVT reversals subtracted; the last good read), less ``base``: what the ledger
  showed for the flight's first day when a flight starting mid-day was put (the campaign's earlier
  flights that day). A flight starting at a UTC midnight counts its days whole.
- P, the spend deltas replicas reported that the ledger may not hold yet. A replica counts a bill
  only once its event is in the region's stream, so a delta control received at ``t`` concerns
  events in the stream by ``t``; once the ledger's ``caught_up`` (every event in the stream then
  has been applied) passes ``t + MARGIN_S``, L holds it and the delta is dropped.

So a bill never counts less than once: until the ledger has caught up past its report it may
count twice (in P and already in L, or reported by two replicas when a resent notice reached
both). With no ledger to read (no Redis, a stopped consumer, Redis errors) nothing is dropped and
control counts what the replicas reported, as before the ledger was read.

``total`` (L + P) is what the money side counts: the lease cap. ``estimate`` is what pacing
steers by and what control reports as spent: the same less the deltas received before the
ledger's last caught-up mark, which ``total`` keeps ``MARGIN_S`` longer in case the two clocks
disagree. Steering by ``total``, every bill counted twice for a second or two: a campaign looked
ahead of plan by its last seconds of spend, its throttle was cut, then it fell behind, and the
pacing error measured the overcount too. A skew past the mark can only make the estimate count a
bill late, never the cap lose it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DAY_S = 86_400.0
MARGIN_S = 1.0  # clock skew between control and the ledger consumer
BUCKET_S = 1.0  # deltas received within one such slot are kept as one entry (at the latest time)
MAX_PENDING = 16  # entries per region; past it the oldest two merge (dropped when the later is)


def flight_days(start: float, end: float) -> range:
    """The UTC days (``int(t // DAY_S)``) that ``[start, end)`` overlaps."""
    return range(int(start // DAY_S), max(int(start // DAY_S) + 1, int(math.ceil(end / DAY_S))))


@dataclass
class SpendBook:
    """One flight's spend, per region: finalized (ledger) plus provisional (replica deltas)."""

    ledger: dict[str, dict[str, float]] = field(default_factory=dict)  # region -> day -> L (last good read)
    base: dict[str, float] = field(default_factory=dict)  # region -> the first day's L when put mid-day
    pending: dict[str, list[list[float]]] = field(default_factory=dict)  # region -> [[received, amount]]
    reported: dict[str, float] = field(default_factory=dict)  # region -> replicas' reported spend (all)
    _total: float | None = field(default=None, repr=False, compare=False)
    # region -> the ledger's caught-up mark at the last read (not stored: a restart reads it anew)
    marks: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def add(self, region: str, amount: float, now: float) -> None:
        """A replica's spend delta, received at ``now``."""
        self.reported[region] = self.reported.get(region, 0.0) + amount
        pend = self.pending.setdefault(region, [])
        if pend and int(pend[-1][0] / BUCKET_S) == int(now / BUCKET_S):
            pend[-1][0] = max(pend[-1][0], now)
            pend[-1][1] += amount
        else:
            pend.append([now, amount])
            if len(pend) > MAX_PENDING:
                (_, a), (t, b) = pend[0], pend[1]
                pend[:2] = [[t, a + b]]
        self._total = None

    def merge(self, region: str, caught_up: float, days: dict[int, float | None]) -> None:
        """A read of the ledger: this campaign's finalized spend per day (None: the day's key is
        missing, expired or never written: the last value stands) and the region's caught-up
        mark (-inf when unknown): deltas received before it (less the margin) are in L."""
        for day, v in days.items():
            if v is not None and (v or str(day) in self.ledger.get(region, {})):
                self.ledger.setdefault(region, {})[str(day)] = v
        self.marks[region] = caught_up
        cut = caught_up - MARGIN_S
        pend = self.pending.get(region)
        if pend and pend[0][0] <= cut:
            self.pending[region] = [e for e in pend if e[0] > cut]
        self._total = None

    def finalized(self, region: str) -> float:
        """L less the base, never below zero (a reversal of an earlier flight's bill is not
        this flight's to spend again)."""
        return max(0.0, sum(self.ledger.get(region, {}).values()) - self.base.get(region, 0.0))

    def provisional(self, region: str) -> float:
        return sum(a for _, a in self.pending.get(region, ()))

    def passed(self, region: str) -> float:
        """The deltas the ledger's last caught-up mark passed, not yet dropped (the skew margin)."""
        mark = self.marks.get(region, -math.inf)
        return sum(a for t, a in self.pending.get(region, ()) if t <= mark)

    def regions(self) -> set[str]:
        return {r for r, v in self.ledger.items() if v} | {r for r, v in self.pending.items() if v}

    def by_region(self) -> dict[str, float]:
        return {r: self.finalized(r) + self.provisional(r) for r in self.regions()}

    @property
    def total(self) -> float:
        """L + P: never less than once (the lease cap counts this)."""
        if self._total is None:
            self._total = sum(self.by_region().values())
        return self._total

    @property
    def estimate(self) -> float:
        """L + P less the deltas the ledger has caught up past (see the module docstring)."""
        return self.total - sum(self.passed(r) for r in self.marks)

    def to_dict(self) -> dict:
        return {"ledger": self.ledger, "base": self.base, "pending": self.pending, "reported": self.reported}

    @classmethod
    def from_dict(cls, d: dict) -> "SpendBook":
        return cls({r: dict(v) for r, v in d.get("ledger", {}).items()}, dict(d.get("base", {})),
                   {r: [list(e) for e in v] for r, v in d.get("pending", {}).items()}, dict(d.get("reported", {})))

    @classmethod
    def legacy(cls, by_region: dict[str, float], now: float) -> "SpendBook":
        """From a state document written before control read the ledger: the replicas' totals
        count as received now, until the ledger has caught up past this start."""
        return cls(pending={r: [[now, v]] for r, v in by_region.items() if v > 0}, reported=dict(by_region))


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


async def read_ledger(redis, regions, days) -> dict[str, tuple[float, dict[int, dict[str, float]]]]:
    """Per region, the ledger's caught-up mark (-inf when unknown) and its finalized spend hash
    for each of ``days`` (empty when the key is missing), read in one MULTI/EXEC: the mark first,
    so the hashes hold at least everything it covers."""
    from fleet.ledger.consumer import ledger_prefix

    regions, days = list(regions), list(days)
    pipe = redis.pipeline(transaction=True)
    for region in regions:
        p = ledger_prefix(region)
        pipe.get(p + "caught_up")
        for day in days:
            pipe.hgetall(f"{p}spend:{day}")
    res = await pipe.execute()
    out, i = {}, 0
    for region in regions:
        raw = res[i]
        try:
            mark = float(_s(raw)) if raw is not None else -math.inf
        except ValueError:
            mark = -math.inf
        hashes = {}
        for j, day in enumerate(days):
            h = res[i + 1 + j] or {}
            hashes[day] = {_s(k): float(_s(v)) for k, v in h.items()}
        out[region] = (mark, hashes)
        i += 1 + len(days)
    return out
