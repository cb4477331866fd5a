"""Budget follows traffic when a region is lost: its slices go to the region that took its traffic.

The exchanges reach the fleet through one latency-routed, health-checked DNS name
(``infra/terraform/modules/global``): each is answered with the nearest healthy region, so the
exchanges of a lost region send to the healthy region nearest to it (``nearest_healthy``, the one
definition of that rule; the simulated exchanges' DNS, ``fleet.sim.dns``, routes by it too).
Without a re-lease the lost region's share of every campaign's plan would go unspent (its
replicas ask for no lease) while its heir serves its auctions on its own smaller share. Control
hands each lost region's share to its heir (``Pacer.heirs``), and takes it back once the region
reports again and sees traffic of its own (``held``). Only the split of the plan between regions moves; the lease cap (budget less
spend and every outstanding lease, lapsed ones included) is unchanged, so no campaign can pass
its budget through a failover.

A region is lost when control's health view calls it unhealthy after it had reported (no
heartbeat within ``health_stale_s``); one never heard from since control started had no traffic
to hand on. A degraded region still serves, and keeps its slices.
"""

from __future__ import annotations

from collections.abc import Iterable


def nearest_healthy(latency_ms: dict[str, dict[str, float]], origin: str, healthy: Iterable[str]) -> str | None:
    """The healthy region of lowest round trip from ``origin`` (itself when healthy); ties by name."""
    row = latency_ms[origin]
    return min((r for r in healthy if r in row), key=lambda r: (row[r], r), default=None)


def lost_regions(view: dict[str, dict]) -> set[str]:
    """Regions of a health view (``HealthBook.view``) that went silent after having reported."""
    return {r for r, v in view.items() if v["status"] == "unhealthy" and v.get("last_seen_s_ago") is not None}


def heirs(view: dict[str, dict], latency_ms: dict[str, dict[str, float]]) -> dict[str, str]:
    """Lost region -> the healthy region nearest to it (where its exchanges now send). A lost
    region with no healthy region left has no heir (nothing to re-lease to)."""
    lost = lost_regions(view)
    serving = [r for r in latency_ms if r not in lost and view.get(r, {}).get("status") != "unhealthy"]
    out = {}
    for region in sorted(lost):
        heir = nearest_healthy(latency_ms, region, serving) if region in latency_ms else None
        if heir is not None:
            out[region] = heir
    return out


def held(previous: dict[str, str], lost_now: dict[str, str], busy: set[str]) -> dict[str, str]:
    """``lost_now`` plus each region lost before that reports again but has no traffic yet: the
    DNS sends its exchanges back only after three passing checks and the records' TTL (up to a
    minute), and until then its auctions are still its heir's, and so are its slices."""
    out = dict(lost_now)
    for lost, heir in previous.items():
        if lost not in out and lost not in busy and heir not in out:
            out[lost] = heir
    return out


def shares(rates: dict[str, float], heirs: dict[str, str], base: dict[str, float]) -> dict[str, float]:
    """Each region's share of a plan split by ``rates`` (opportunities a second, or priors), with
    every lost region's moved to its heir. The heir's rate counts as at least ``base`` (its rate
    before the failover; default its rate now) plus the lost regions' last rates, and its own once
    that has grown past them: the traffic it took over, counted once either way."""
    rates = dict(rates)
    moved: dict[str, float] = {}
    for lost, heir in heirs.items():
        moved[heir] = moved.get(heir, 0.0) + rates.pop(lost, 0.0)
    for heir, extra in moved.items():
        now = rates.get(heir, 0.0)
        rates[heir] = max(now, base.get(heir, now) + extra)
    total = sum(rates.values())
    return {r: v / total for r, v in rates.items()} if total > 0 else {}
