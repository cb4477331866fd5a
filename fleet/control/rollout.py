"""Model-version canary rollouts, judged by the control actor from what replicas report.

A rollout moves a candidate version through growing traffic shares (``Thresholds.steps``), then
promotes it to 1.0. At each step the candidate is compared with the baseline over the same window
of time and traffic, so shifts in the market hit both sides alike: error+fallback share, pricing
p99, bid rate and value per dollar bid. One failed check rolls back at once; passing every check
needs both the dwell time and enough samples, because a verdict on a few hundred requests after a
few seconds is noise.

Everything here is plain data (``to_dict``/``from_dict`` are JSON-safe) because the control
actor keeps its state in Redis as JSON and must resume a rollout mid-step after a restart. Times
are whatever clock the caller passes; persisted rollouts need wall-clock time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from itertools import zip_longest

from fleet.obs.histogram import BOUNDS_S, quantile

STATES = ("canary", "promoted", "rolled_back", "aborted")
FAIL_FAST_MIN_PRICED = 20
TAIL_SAMPLES = 5  # the latency check's quantile leaves at least this many samples above it


@dataclass
class Thresholds:
    steps: tuple[float, ...] = (0.05, 0.25, 0.5)  # canary shares; after the last: promote to 1.0
    dwell_s: float = 30.0  # least time at a step
    min_priced: int = 200  # least requests priced by each version in the step before judging
    max_error_delta: float = 0.01  # candidate error share - baseline's, absolute
    max_p99_ratio: float = 1.5  # candidate p99 <= baseline p99 * ratio + slack
    p99_slack_ms: float = 1.0
    bid_rate_tolerance: float = 0.25  # |candidate bid rate / baseline's - 1|
    min_efficiency_ratio: float = 0.85  # candidate value per dollar bid / baseline's
    fail_fast_error_share: float = 0.5  # with >= 20 priced: roll back without waiting

    def __post_init__(self) -> None:
        self.steps = tuple(float(s) for s in self.steps)
        if not self.steps or any(not 0 < s < 1 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing shares in (0, 1), got {self.steps}")

    def to_dict(self) -> dict:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _empty_hist() -> list[int]:
    return [0] * (len(BOUNDS_S) + 1)


@dataclass
class VersionStats:
    """One version's figures over a window; errors are part of priced (they fell back to rules)."""

    priced: int = 0
    errors: int = 0
    bids: int = 0
    value: float = 0.0  # sum of model value CPM of bids
    price: float = 0.0  # sum of bid CPM
    latency_counts: list[int] = field(default_factory=_empty_hist)  # fleet.obs.histogram buckets

    def add(self, other: "VersionStats") -> None:
        self.priced += other.priced
        self.errors += other.errors
        self.bids += other.bids
        self.value += other.value
        self.price += other.price
        self.latency_counts = [x + y for x, y in zip_longest(self.latency_counts, other.latency_counts, fillvalue=0)]

    @property
    def error_share(self) -> float:
        return self.errors / self.priced if self.priced else 0.0

    @property
    def bid_rate(self) -> float:
        return self.bids / self.priced if self.priced else 0.0

    @property
    def efficiency(self) -> float | None:
        return self.value / self.price if self.price > 0 else None

    @property
    def p99_ms(self) -> float | None:
        return self.quantile_ms(0.99)

    def quantile_ms(self, q: float) -> float | None:
        s = quantile(self.latency_counts, q)
        return None if s is None else s * 1000.0

    @property
    def timed(self) -> int:
        return sum(self.latency_counts)

    def figures(self) -> dict:
        """Rounded, JSON-safe (no inf) figures for history and reasons."""
        return {"priced": self.priced, "error_share": round(self.error_share, 4),
                "bid_rate": round(self.bid_rate, 4), "efficiency": _num(self.efficiency),
                "p99_ms": _num(self.p99_ms)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VersionStats":
        return cls(**{**d, "latency_counts": list(d.get("latency_counts") or _empty_hist())})


def tail_quantile(n: int) -> float:
    """The latency quantile both versions are compared at: 0.99, or lower when the smaller window
    holds under 500 samples, so that ``TAIL_SAMPLES`` samples lie above it. The p99 of 30 samples
    is their largest, one GC pause or scheduling stall; compared with the p99 of the baseline's
    several hundred it rolled healthy candidates back. Both sides use the same quantile."""
    return 0.99 if n <= 0 else max(0.5, min(0.99, 1.0 - TAIL_SAMPLES / n))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


@dataclass
class Rollout:
    """One candidate against one baseline.

    Judging waits until both versions have ``min_priced`` samples in the step's window: a
    relative check against a baseline with no traffic means nothing, and the baseline keeps at
    least half the traffic at every step, so it fills first in practice. Fail-fast does not wait:
    a candidate failing half its requests is judged on its own figures alone. A window that never
    fills (no traffic) keeps the rollout waiting; the operator ends it with ``abort``.
    """

    id: str
    version: str
    baseline: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    state: str = "canary"
    step: int = 0
    share: float = 0.0
    step_started: float = 0.0
    stats: dict[str, VersionStats] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def begin(cls, id: str, version: str, baseline: str, now: float,
              thresholds: Thresholds | None = None) -> "Rollout":
        if version == baseline:
            raise ValueError("candidate and baseline are the same version")
        t = thresholds or Thresholds()
        r = cls(id, version, baseline, t, share=t.steps[0], step_started=now)
        r._log(now, "start", f"canary {version} against {baseline}", {})
        return r

    @property
    def active(self) -> bool:
        return self.state == "canary"

    def observe(self, version: str, stats: VersionStats) -> None:
        """Add one report to the current step's window; other versions and ended rollouts are ignored."""
        if self.active and version in (self.version, self.baseline):
            self.stats.setdefault(version, VersionStats()).add(stats)

    def evaluate(self, now: float) -> str | None:
        """'advance', 'promote', 'rollback', or None to keep waiting."""
        if not self.active:
            return None
        t = self.thresholds
        cand = self.stats.get(self.version, VersionStats())
        base = self.stats.get(self.baseline, VersionStats())
        figs = {"candidate": cand.figures(), "baseline": base.figures()}
        if cand.priced >= FAIL_FAST_MIN_PRICED and cand.error_share >= t.fail_fast_error_share:
            return self._end(now, "rolled_back", "rollback",
                             f"fail-fast: error share {cand.error_share:.3f} >= {t.fail_fast_error_share}", figs)
        if now - self.step_started < t.dwell_s or min(cand.priced, base.priced) < t.min_priced:
            return None
        failed = self._failed_check(cand, base)
        if failed:
            return self._end(now, "rolled_back", "rollback", failed, figs)
        if self.step + 1 >= len(t.steps):
            return self._end(now, "promoted", "promote", "every step passed", figs, share=1.0)
        self.step += 1
        self.share = t.steps[self.step]
        self.step_started = now
        self.stats = {}
        self._log(now, "advance", f"step {self.step - 1} passed", figs)
        return "advance"

    def abort(self, now: float, reason: str) -> None:
        if self.active:
            self._end(now, "aborted", "abort", reason, {})

    def _failed_check(self, cand: VersionStats, base: VersionStats) -> str | None:
        """The first failing threshold, named with its figures; None when all pass."""
        t = self.thresholds
        if cand.error_share > base.error_share + t.max_error_delta:
            return (f"max_error_delta: error share {cand.error_share:.4f} > baseline "
                    f"{base.error_share:.4f} + {t.max_error_delta}")
        q = tail_quantile(min(cand.timed, base.timed))
        cp, bp = cand.quantile_ms(q), base.quantile_ms(q)
        if cp is not None and bp is not None and cp > bp * t.max_p99_ratio + t.p99_slack_ms:
            name = "p99" if q == 0.99 else f"p{q * 100:.1f}"
            return (f"max_p99_ratio: {name} {cp:.3f} ms > baseline {bp:.3f} ms * {t.max_p99_ratio} + "
                    f"{t.p99_slack_ms}")
        if base.bid_rate > 0 and abs(cand.bid_rate / base.bid_rate - 1) > t.bid_rate_tolerance:
            return (f"bid_rate_tolerance: bid rate {cand.bid_rate:.4f} vs baseline {base.bid_rate:.4f}, "
                    f"off by more than {t.bid_rate_tolerance:.0%}")
        ce, be = cand.efficiency, base.efficiency
        if be is not None and (ce or 0.0) < be * t.min_efficiency_ratio:
            return (f"min_efficiency_ratio: value per dollar bid {ce or 0.0:.4f} < baseline "
                    f"{be:.4f} * {t.min_efficiency_ratio}")
        return None

    def _end(self, now: float, state: str, action: str, reason: str, figs: dict,
             share: float = 0.0) -> str:
        self.state, self.share = state, share
        self._log(now, action, reason, figs)
        return action

    def _log(self, now: float, action: str, reason: str, figures: dict) -> None:
        """``share`` is the share in force after the action."""
        self.history.append({"t": now, "action": action, "share": self.share, "reason": reason,
                             "figures": figures})

    def to_dict(self) -> dict:
        return {"id": self.id, "version": self.version, "baseline": self.baseline,
                "thresholds": self.thresholds.to_dict(), "state": self.state, "step": self.step,
                "share": self.share, "step_started": self.step_started,
                "stats": {k: v.to_dict() for k, v in self.stats.items()},
                "history": [dict(h) for h in self.history]}

    @classmethod
    def from_dict(cls, d: dict) -> "Rollout":
        if d["state"] not in STATES:
            raise ValueError(f"unknown rollout state {d['state']!r}")
        return cls(d["id"], d["version"], d["baseline"], Thresholds.from_dict(d.get("thresholds", {})),
                   d["state"], int(d["step"]), float(d["share"]), float(d["step_started"]),
                   {k: VersionStats.from_dict(v) for k, v in d.get("stats", {}).items()},
                   [dict(h) for h in d.get("history", [])])
