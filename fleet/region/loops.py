"""A replica's background loops beside the request path (never per request).

- ``supervise_ledger``: keep the region's ledger consumer running (a restarted actor needs its
  start) and publish this replica's pacing view for reconciliation;
- ``export_metrics``: the replica's counts to Prometheus every ``metrics_s``;
- ``refresh_features``: the cache shards' precomputed features every refresh period.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("ray.serve")


def pacing_view(budget, now: float) -> dict:
    """Spend today per campaign as this replica's pacing counts it, with its ``_kind``: under
    control's leases the replica counts bills ("billed"); the local allowance, bids ("reserved").
    Empty when there is nothing to say."""
    billed = hasattr(budget, "spend_days")
    cids = set(budget.reserved) | set(getattr(budget, "spend", ()))
    view = {cid: budget.spent_today(cid, now) for cid in cids}
    if view:
        view["_kind"] = "billed" if billed else "reserved"
    return view


async def supervise_ledger(ledger, emitter, bidder, region: str, replica: str, every_s: float = 2.0) -> None:
    """``ledger``: the region's consumer (``start()``, idempotent), or None where nothing runs
    it from here; the view goes to ``fleet:<region>:pacing:<replica>`` while Redis is up."""
    while True:
        try:
            if ledger is not None:
                ledger.start()
            if emitter.redis is not None and emitter.redis_up:
                view = pacing_view(bidder.budget, bidder.clock())
                if view:
                    key = f"fleet:{region}:pacing:{replica}"
                    await emitter.redis.hset(key, mapping=view)
                    await emitter.redis.expire(key, 2 * 86_400)
        except Exception as exc:
            log.warning("ledger supervision: %s", exc)
        await asyncio.sleep(every_s)


async def export_metrics(metrics, every_s: float, bidder, cache, ledger, wins, partners=None) -> None:
    """``wins()``: win notices counted so far; the ledger's stream lag when there is a ledger."""
    while True:
        await asyncio.sleep(every_s)
        try:
            lag = None
            if ledger is not None:
                lag = (await asyncio.wait_for(ledger.stats(), 2.0)).get("lag")
            metrics.export(dict(bidder.stats), bidder.latency.snapshot(),
                           cache.summary() if cache is not None else None,
                           bidder.budget, lag=lag, wins=wins(),
                           partners=partners.summary() if partners is not None else None)
        except Exception as exc:
            log.warning("metrics export failed: %s", exc)


async def refresh_features(cache, win_rate, every_s: float) -> None:
    """The shards' features; their price levels anchor the win-rate model per publisher."""
    while True:
        try:
            await cache.refresh()
            win_rate.set_anchors({pid: level for pid, (_rate, level) in cache.features.items() if level})
        except Exception as exc:
            log.warning("cache features refresh failed: %s", exc)
        await asyncio.sleep(every_s)
