"""Region health from replica heartbeats, as the control actor sees it.

Each beat carries counters since the replica's previous beat. They are kept per replica as
exponentially weighted per-second rates (time constant ``tau_s``, weighted by the beat's
interval), so one bad second degrades a region only if it is bad enough, and a region recovers
as good beats replace bad ones. Shares are ratios of summed rates over live replicas: a busy
replica weighs more than an idle one.

A region is unhealthy when none of its replicas beat within ``stale_s`` (or it is expected and
never reported), degraded when its error or late share is over threshold, else healthy.
``to_dict``/``from_dict`` keep last-seen times across a control-actor restart, so a region that
went silent is not reported healthy by a fresh actor; persisted times need wall-clock ``now``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

FIGURES = ("requests", "answered", "errors", "late", "bids", "degraded", "wins")


@dataclass
class ReplicaBeat:
    last: float  # time of the last beat
    rates: dict[str, float] = field(default_factory=dict)  # EWMA per second, keys FIGURES


class HealthBook:
    def __init__(self, stale_s: float = 5.0, max_error_share: float = 0.01,
                 max_late_share: float = 0.02, tau_s: float = 10.0, forget_s: float = 600.0) -> None:
        self.stale_s = stale_s
        self.max_error_share = max_error_share
        self.max_late_share = max_late_share
        self.tau_s = tau_s
        self.forget_s = forget_s  # replicas silent this long are dropped (replaced, scaled down)
        self.expected: set[str] = set()
        self.replicas: dict[str, dict[str, ReplicaBeat]] = {}

    def expect(self, regions: list[str]) -> None:
        """Regions that must report: listed as unhealthy until they do."""
        self.expected.update(regions)

    def beat(self, region: str, replica: str, now: float, figures: dict) -> None:
        """Fold one heartbeat's counters (since the replica's previous beat) into its rates."""
        book = self.replicas.setdefault(region, {})
        prev = book.get(replica)
        interval = figures.get("interval_s") or (now - prev.last if prev else 0.0)
        interval = max(float(interval), 1e-3)
        rates = {k: float(figures.get(k, 0)) / interval for k in FIGURES}
        if prev is None or not prev.rates:
            book[replica] = ReplicaBeat(now, rates)
        else:
            w = 1.0 - math.exp(-interval / self.tau_s)
            prev.rates = {k: prev.rates.get(k, 0.0) + w * (rates[k] - prev.rates.get(k, 0.0)) for k in FIGURES}
            prev.last = now
        for name in [r for r, b in book.items() if now - b.last > self.forget_s]:
            del book[name]

    def forget(self, region: str, replica: str | None = None) -> None:
        """Drop one replica, or with no replica the region's every replica and its expectation."""
        if replica is None:
            self.replicas.pop(region, None)
            self.expected.discard(region)
        else:
            self.replicas.get(region, {}).pop(replica, None)

    def view(self, now: float) -> dict[str, dict]:
        """Per region: status, reason, rate (req/s), error_share and late_share (of requests),
        bid_rate (bids per answer), replicas (live count), last_seen_s_ago (None: never)."""
        return {r: self._region(r, now) for r in sorted(self.expected | set(self.replicas))}

    def _region(self, region: str, now: float) -> dict:
        beats = self.replicas.get(region, {})
        live = [b for b in beats.values() if now - b.last <= self.stale_s]
        last = max((b.last for b in beats.values()), default=None)
        tot = {k: sum(b.rates.get(k, 0.0) for b in live) for k in FIGURES}
        req = tot["requests"]
        error_share = tot["errors"] / req if req > 0 else 0.0
        late_share = tot["late"] / req if req > 0 else 0.0
        if last is None:
            status, reason = "unhealthy", "never reported"
        elif not live:
            status, reason = "unhealthy", f"no heartbeat for {now - last:.1f} s (stale after {self.stale_s} s)"
        elif error_share > self.max_error_share:
            status, reason = "degraded", f"error share {error_share:.4f} > {self.max_error_share}"
        elif late_share > self.max_late_share:
            status, reason = "degraded", f"late share {late_share:.4f} > {self.max_late_share}"
        else:
            status, reason = "healthy", ""
        return {"status": status, "reason": reason, "rate": round(req, 3),
                "error_share": round(error_share, 5), "late_share": round(late_share, 5),
                "bid_rate": round(tot["bids"] / tot["answered"], 5) if tot["answered"] > 0 else 0.0,
                "win_rate": round(tot["wins"] / tot["bids"], 5) if tot["bids"] > 0 else 0.0,
                "degraded_share": round(tot["degraded"] / req, 5) if req > 0 else 0.0,
                "replicas": len(live),
                "last_seen_s_ago": None if last is None else round(now - last, 3)}

    def to_dict(self) -> dict:
        return {"stale_s": self.stale_s, "max_error_share": self.max_error_share,
                "max_late_share": self.max_late_share, "tau_s": self.tau_s, "forget_s": self.forget_s,
                "expected": sorted(self.expected),
                "replicas": {r: {n: asdict(b) for n, b in book.items()} for r, book in self.replicas.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "HealthBook":
        h = cls(**{k: d[k] for k in ("stale_s", "max_error_share", "max_late_share", "tau_s", "forget_s") if k in d})
        h.expected = set(d.get("expected", []))
        h.replicas = {r: {n: ReplicaBeat(float(b["last"]), dict(b.get("rates", {}))) for n, b in book.items()}
                      for r, book in d.get("replicas", {}).items()}
        return h
