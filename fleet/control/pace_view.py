"""The pacer's state as operators read it (``GET /control/v1/pacing``, the dashboard, metrics)."""

from __future__ import annotations

from fleet.control.pacer import Pacer


def pace_view(pacer: Pacer, now: float) -> dict:
    """Every campaign's pace as the API, the dashboard and the metrics show it."""
    out = {}
    for cid, cp in pacer.campaigns.items():
        f = cp.flight
        planned = f.budget * f.shape().fraction(now)
        spent, ledger = cp.book.estimate, sum(cp.book.finalized(n) for n in cp.book.regions())
        out[cid] = {
            "budget": f.budget, "start": f.start, "end": f.end, "curve": f.curve, "paused": f.paused,
            "spent": round(spent, 6), "planned": round(planned, 6),
            "ledger": round(ledger, 6), "provisional": round(spent - ledger, 6),
            # what the lease cap counts: also the deltas the ledger has caught up past, for
            # the clock-skew margin (fleet.control.spend)
            "counted": round(cp.spent, 6),
            "pacing_error": round((spent - planned) / planned, 4) if planned > 0 else None,
            "outstanding": round(pacer.outstanding(cid), 6),
            "regions": {n: {"throttle": round(rp.throttle, 4), "opp_rate": round(rp.opp_rate, 3),
                            "target_rate": round(rp.target_rate, 6), "actual_rate": round(rp.actual_rate, 6),
                            "hot": rp.hot, "spent": round(cp.by_region.get(n, 0.0), 6)}
                        for n, rp in cp.regions.items()},
        }
    return out
