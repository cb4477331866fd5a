"""What control's dashboard reads: spend against plan per campaign, sampled every few seconds,
and the one document ``/v1/dashboard`` serves. Functions of the ``Control`` (``ctl``), kept
apart so the service holds decisions and this module holds the operator's view."""

from __future__ import annotations

import msgspec

from fleet.control.pace_view import pace_view


def sample(ctl, now: float, every_s: float = 2.0, keep: int = 600) -> None:
    """Spend against plan per campaign, every few seconds (kept in memory for the dashboard)."""
    for cid, cp in ctl.pacer.campaigns.items():
        h = ctl.history.setdefault(cid, [])
        if h and now - h[-1][0] < every_s:
            continue
        f = cp.flight
        h.append((round(now, 2), round(cp.book.estimate, 6), round(f.budget * f.shape().fraction(now), 6)))
        del h[:-keep]


def document(ctl) -> dict:
    """Everything the dashboard shows, in one document."""
    now = ctl.clock()
    regions = ctl.health.view(now)
    for name, figs in regions.items():
        lat = ctl.latency.get(name)
        fresh = lat is not None and now - lat["t"] <= 3 * ctl.settings.health_stale_s
        figs["p50_ms"] = lat["p50_ms"] if fresh else None
        figs["p99_ms"] = lat["p99_ms"] if fresh else None
        figs["ledger_drift"] = ctl.drift.get(name, {}).get("drift")
        figs["partners"] = ctl.partners.regions.get(name, {})
    campaigns = pace_view(ctl.pacer, now)
    for cid, v in campaigns.items():
        v["series"] = ctl.history.get(cid, [])[-150:]
    return {"t": now, "epoch": ctl.epoch, "policy_epoch": ctl.policies.epoch, "regions": regions,
            "campaigns": campaigns, "model": msgspec.to_builtins(ctl.assignment()),
            "current": ctl.current or ctl.reported_model,
            "rollouts": [{"id": r.id, "version": r.version, "baseline": r.baseline, "state": r.state,
                          "share": r.share, "history": r.history[-5:]} for r in ctl.rollouts.values()][-5:],
            "redis_up": ctl.redis_up, "partner_policy": ctl.partners.view()["policy"]}
