"""Tail awareness: which partners get called, and how often.

Per partner and tier, a window of recent answers: the latency of each in-time answer, and a late
one at its cutoff (we stopped waiting there, so all we know is "at least the cutoff"). Its p95
is therefore at the cutoff exactly when more than 5% of recent calls were late: such a partner
is **slow** and is throttled to ``probe_share`` of its eligible requests, still enough answers to
see it recover. The throttle is a circuit breaker: once tripped it holds whatever the window
says, and recovery is judged from the probes, not from a window of 200 that still holds the
fault's late calls and would refill at the probe share for minutes: ``recover_after`` in-time
answers in a row close it, and the window forgets its late calls (the fault is over; its in-time
history stays, so one late call more does not trip it again). A partner tripped again within a
window's worth of answers of its recovery failed the trial: the next recovery needs twice the
streak (up to 8x ``recover_after``), so a partner that is still slow stays throttled. A partner whose
recent calls error more than ``max_error_rate`` is **erroring**, throttled the same way; ``backoff_after`` consecutive errors **back it off**: no calls at all for
``backoff_s``, doubling up to ``max_backoff_s``, then one probe decides. Control's share
(``PartnerCutoff.share``) applies always; the local throttle combines with it by min (control's
share may already be its own probe share: a product would leave too few calls to re-measure). All of it shows in ``/stats`` (``state``, ``p95_ms``,
``throttled``, ``backed_off``).
"""

from __future__ import annotations

import random
from collections import deque

from fleet.config import PartnerSettings


MAX_NEED_FACTOR = 8  # the recovery streak doubles per failed trial up to this x recover_after


def p95(values) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return float(s[min(len(s) - 1, int(0.95 * len(s)))])


class TierWindow:
    __slots__ = ("lat", "errors", "tripped", "streak", "need", "since")

    def __init__(self, n: int, need: int):
        self.lat: deque[float] = deque(maxlen=n)  # ms; a late call counts at its cutoff
        self.errors: deque[bool] = deque(maxlen=n)  # per call: did it error
        self.tripped = False  # throttled for its tail until ``need`` in-time answers in a row
        self.streak = 0  # in-time answers in a row since it tripped
        self.need = need  # the streak that closes it (doubles per failed trial)
        self.since: int | None = None  # answers since it last recovered (None: never tripped)


class PartnerHealth:
    def __init__(self, settings: PartnerSettings, rng: random.Random | None = None):
        self.s = settings
        self.rng = rng or random.Random()
        self.tiers: dict[str, TierWindow] = {}
        self.consecutive_errors = 0
        self.backoff_until = 0.0
        self.backoff_s = settings.backoff_s
        self.late_share: dict[str, float] = {}

    def _w(self, tier: str) -> TierWindow:
        w = self.tiers.get(tier)
        if w is None:
            w = self.tiers[tier] = TierWindow(self.s.window, self.s.recover_after)
        return w

    def state(self, tier: str, cutoff_ms: float, now: float) -> str:
        """"backoff", "erroring", "slow" or "ok" for calls of ``tier`` at ``cutoff_ms``."""
        if now < self.backoff_until:
            return "backoff"
        w = self.tiers.get(tier)
        if w is None or len(w.lat) + len(w.errors) < self.s.min_samples:
            return "ok"
        if len(w.errors) >= self.s.min_samples and sum(w.errors) / len(w.errors) > self.s.max_error_rate:
            return "erroring"
        if w.tripped:
            return "slow"
        if len(w.lat) >= self.s.min_samples:
            q = p95(w.lat)
            if q is not None and q >= cutoff_ms:
                self._trip(w)
                return "slow"
        return "ok"

    def _trip(self, w: TierWindow) -> None:
        """Throttled until the probes say otherwise; a trip soon after a recovery doubles the streak needed."""
        recent = w.since is not None and w.since < self.s.window
        # At most 8x the first streak: an unbroken run of 200 probes is out of reach for a partner
        # fixed but still late on 3-4% of calls (healthy by the 5% rule), which then stayed
        # throttled for ~10^5-10^6 eligible requests (review, 2026-12-05); 40 in a row still keeps
        # one late on 10% of its calls throttled for thousands.
        cap = min(self.s.window, MAX_NEED_FACTOR * self.s.recover_after)
        w.need = min(w.need * 2, cap) if recent else self.s.recover_after
        w.tripped, w.streak = True, 0

    def admit(self, tier: str, cutoff_ms: float, share: float, now: float) -> str | None:
        """None to call now, else why not ("backoff", "throttled")."""
        st = self.state(tier, cutoff_ms, now)
        if st == "backoff":
            return "backoff"
        if st != "ok":  # by min with control's share, which may already hold its own probe share
            share = min(share, self.s.probe_share)
        if share < 1.0 and self.rng.random() >= share:
            return "throttled"
        return None

    def observe(self, tier: str, outcome: str, elapsed_ms: float, cutoff_ms: float, now: float) -> None:
        """One call's end: "in_time" (any answer before the cutoff), "late", "error"."""
        w = self._w(tier)
        if w.since is not None:
            w.since += 1
        if w.tripped:
            w.streak = w.streak + 1 if outcome == "in_time" else 0
        if outcome == "error":
            w.errors.append(True)
            self.consecutive_errors += 1
            if self.consecutive_errors >= self.s.backoff_after:
                self.backoff_until = now + self.backoff_s
                self.backoff_s = min(self.backoff_s * 2.0, self.s.max_backoff_s)
            return
        w.errors.append(False)
        self.consecutive_errors = 0
        self.backoff_s = self.s.backoff_s
        w.lat.append(cutoff_ms if outcome == "late" else min(elapsed_ms, cutoff_ms))
        if w.tripped and w.streak >= w.need:  # answering in time again: closed, the fault's lates forgotten
            w.lat = deque((x for x in w.lat if x < cutoff_ms), maxlen=self.s.window)
            w.tripped, w.streak, w.since = False, 0, 0

    def p95_ms(self, tier: str) -> float | None:
        w = self.tiers.get(tier)
        return p95(w.lat) if w is not None else None
