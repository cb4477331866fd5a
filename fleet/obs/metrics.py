"""The fleet's own Prometheus metrics, beside Ray Serve's (same Ray metrics endpoint, scraped
per node), labelled by region, and by tier, version, stage or reason where that is the point.

Nothing here runs per request: the replica already counts everything (``RegionBidder.stats``,
the stage histograms, the cache and lease summaries), and ``RegionMetrics.export`` turns the
growth of those counts into metric increments every ``metrics_s`` seconds from a background
loop. Metrics separate technical health (latency, late answers, errors, degraded decisions,
cache, fallbacks) from economic health (bids, wins, participation, lease use).
"""

from __future__ import annotations

from fleet.control.pace_view import pace_view
from fleet.obs.histogram import quantile

PARTICIPATION = ("eligible", "called", "in_time", "participating", "won")


def _ray_metrics():
    try:
        from ray.util import metrics

        return metrics
    except Exception:  # outside Ray: nothing to export to
        return None


class RegionMetrics:
    def __init__(self, region: str):
        self.region = region
        m = _ray_metrics()
        self.enabled = m is not None
        self.prev: dict[str, float] = {}
        if not self.enabled:
            return
        keys = ("region",)
        self.requests = m.Counter("fleet_requests", "bid requests by tier", tag_keys=keys + ("tier",))
        self.nobids = m.Counter("fleet_nobids", "no-bid answers by reason", tag_keys=keys + ("reason",))
        self.degraded = m.Counter("fleet_degraded", "degraded decisions by kind", tag_keys=keys + ("kind",))
        self.late = m.Counter("fleet_late_answers", "answers suppressed for the deadline", tag_keys=keys)
        self.pricing = m.Counter("fleet_pricing", "requests priced, by model version and outcome",
                                 tag_keys=keys + ("version", "outcome"))
        self.participation = m.Counter("fleet_participation", "campaign candidates by step: eligible, "
                                       "called (priced), in_time, participating (bid), won", tag_keys=keys + ("step",))
        self.stage_ms = m.Gauge("fleet_stage_latency_ms", "stage latency quantile over the last interval",
                                tag_keys=keys + ("stage", "quantile"))
        self.cache_hit = m.Gauge("fleet_cache_hit_rate", "cache lookups served from a shard", tag_keys=keys)
        self.cache_age = m.Gauge("fleet_cache_entry_age_s", "mean age of served cache entries", tag_keys=keys)
        self.cache_default = m.Gauge("fleet_cache_default_rate", "lookups answered by population defaults",
                                     tag_keys=keys)
        self.cache_near = m.Gauge("fleet_cache_near_hit_rate", "lookups answered by the ingress's near-cache",
                                  tag_keys=keys)
        self.lease_util = m.Gauge("fleet_lease_utilisation", "committed share of the replica's live leases",
                                  tag_keys=keys)
        self.partner_steps = m.Counter("fleet_partner_requests", "demand partner requests by partner, tier and "
                                       "step: eligible, called, in_time, late, participating, won (and errors)",
                                       tag_keys=keys + ("partner", "tier", "step"))
        self.partner_dropped = m.Counter("fleet_partner_bids_dropped", "partner bids dropped by reason",
                                         tag_keys=keys + ("partner", "reason"))
        self.partner_p95 = m.Gauge("fleet_partner_p95_ms", "partner answer p95 over its recent window (late at "
                                   "the cutoff)", tag_keys=keys + ("partner", "tier"))
        self.partner_throttled = m.Gauge("fleet_partner_throttled", "1 while a partner is throttled or backed off "
                                         "on a tier", tag_keys=keys + ("partner", "tier"))
        self.stream_lag = m.Gauge("fleet_ledger_stream_lag", "events in the region's stream not yet applied",
                                  tag_keys=keys)

    def _grow(self, key: str, value: float) -> float:
        d = value - self.prev.get(key, 0.0)
        self.prev[key] = value
        return d if d > 0 else 0.0

    def export(self, stats: dict, latency: dict[str, list[int]], cache: dict | None, budget=None,
               versions: dict | None = None, lag: int | None = None, wins: int = 0,
               partners: dict | None = None) -> None:
        if not self.enabled:
            return
        tags = {"region": self.region}
        # Counter families kept in the bidder's stats as "<prefix>.<label>": one metric each.
        families = (("tier.", self.requests, "tier"), ("nobid.", self.nobids, "reason"),
                    ("degraded.", self.degraded, "kind"))
        for key, value in stats.items():
            for prefix, counter, label in families:
                if key.startswith(prefix):
                    d = self._grow(key, value)
                    if d:
                        counter.inc(d, {**tags, label: key[len(prefix):]})
                    break
            else:
                if key.startswith("priced."):
                    d = self._grow(key, value)
                    if d:
                        version, _, outcome = key[7:].rpartition(".")
                        self.pricing.inc(d, {**tags, "version": version, "outcome": outcome})
        d = self._grow("late", stats.get("late_suppressed", 0))
        if d:
            self.late.inc(d, tags)
        steps = {"eligible": stats.get("part.eligible", 0), "called": stats.get("part.called", 0),
                 "in_time": stats.get("part.in_time", 0), "participating": stats.get("bids", 0), "won": wins}
        for step, value in steps.items():
            d = self._grow(f"part.{step}", value)
            if d:
                self.participation.inc(d, {**tags, "step": step})
        prev_lat = self.prev.get("_lat", {})
        for stage, counts in latency.items():
            before = prev_lat.get(stage, [0] * len(counts))
            window = [a - b for a, b in zip(counts, before)]
            for q, label in ((0.5, "p50"), (0.99, "p99")):
                v = quantile(window, q)
                if v is not None:
                    self.stage_ms.set(v * 1000.0, {**tags, "stage": stage, "quantile": label})
        self.prev["_lat"] = {k: list(v) for k, v in latency.items()}
        if cache:
            for gauge, key in ((self.cache_hit, "hit_rate"), (self.cache_age, "age_mean_s"),
                               (self.cache_default, "default_rate"), (self.cache_near, "near_hit_rate")):
                if cache.get(key) is not None:
                    gauge.set(cache[key], tags)
        if budget is not None and getattr(budget, "leases", None):
            amount = sum(l.amount for l in budget.leases.values())
            if amount > 0:
                self.lease_util.set(sum(l.committed for l in budget.leases.values()) / amount, tags)
        if lag is not None:
            self.stream_lag.set(lag, tags)
        if partners:
            self._partners(partners, tags)

    def _partners(self, partners: dict, tags: dict) -> None:
        """``partners``: ``Partners.summary()`` (the /stats block)."""
        for pid, row in partners.items():
            for tier, counts in row.get("tiers", {}).items():
                for step, value in counts.items():
                    d = self._grow(f"partner.{pid}.{tier}.{step}", value)
                    if d:
                        self.partner_steps.inc(d, {**tags, "partner": pid, "tier": tier, "step": step})
            for reason, value in row.get("dropped", {}).items():
                d = self._grow(f"partner.{pid}.dropped.{reason}", value)
                if d:
                    self.partner_dropped.inc(d, {**tags, "partner": pid, "reason": reason})
            for tier, q in row.get("p95_ms", {}).items():
                if q is not None:
                    self.partner_p95.set(q, {**tags, "partner": pid, "tier": tier})
            for tier, state in row.get("state", {}).items():
                self.partner_throttled.set(0.0 if state == "ok" else 1.0, {**tags, "partner": pid, "tier": tier})


class ControlMetrics:
    """Control's view: pacing error per campaign each control interval, spend, leases
    outstanding, region health (1 healthy, 0.5 degraded, 0 unhealthy), the model canary's share."""

    def __init__(self):
        m = _ray_metrics()
        self.enabled = m is not None
        if not self.enabled:
            return
        self.pacing_error = m.Gauge("fleet_pacing_error", "(spent - planned) / planned per campaign",
                                    tag_keys=("campaign",))
        self.spent = m.Gauge("fleet_campaign_spend", "spend reported so far in the flight", tag_keys=("campaign",))
        self.outstanding = m.Gauge("fleet_lease_outstanding", "what live leases may still commit",
                                   tag_keys=("campaign",))
        self.health = m.Gauge("fleet_region_health", "1 healthy, 0.5 degraded, 0 unhealthy", tag_keys=("region",))
        self.canary = m.Gauge("fleet_canary_share", "traffic share of the candidate model", tag_keys=("version",))
        self.drift = m.Gauge("fleet_ledger_drift", "(pacing spend - ledger finalized spend) / ledger, today's "
                             "daily flights", tag_keys=("region",))

    def export(self, control) -> None:
        if not self.enabled:
            return
        now = control.clock()
        for cid, v in pace_view(control.pacer, now).items():
            tags = {"campaign": cid}
            if v["pacing_error"] is not None:
                self.pacing_error.set(v["pacing_error"], tags)
            self.spent.set(v["spent"], tags)
            self.outstanding.set(v["outstanding"], tags)
        for region, h in control.health.view(now).items():
            self.health.set({"healthy": 1.0, "degraded": 0.5}.get(h["status"], 0.0), {"region": region})
        for region, d in control.drift.items():
            if d.get("drift") is not None:
                self.drift.set(d["drift"], {"region": region})
        a = control.assignment()
        if a.candidate:
            self.canary.set(a.share, {"version": a.candidate})
