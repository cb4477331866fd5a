"""Participation, counted honestly (seed 001): per partner and tier, and per request.

Per partner and tier: ``eligible`` (the request's tier and imps were ones it may see),
``called`` (sent: after control's share, the tail throttle, backoff, the QPS cap and the time
left), ``in_time`` (a readable answer, bid or no-bid, before its cutoff), ``late`` (no answer by
the cutoff), ``errors`` (connection errors, bad statuses, unreadable answers), ``participating``
(in time with at least one valid bid at or above floor), ``won``; called = in_time + late +
errors. Why an eligible request was not called, and why a bid was dropped, are counted by reason.
Per request: participating bidders (partners with a valid bid, plus our own campaigns when they
offered) bucketed by the milliseconds the stages before fan-out took (``pre_ms``).
"""

from __future__ import annotations

from collections import Counter

from fleet.partners.messages import PartnerTierStats

COUNTERS = ("eligible", "called", "in_time", "late", "participating", "won")
PRE_MS_BUCKETS = (2.0, 5.0, 10.0, 20.0)  # upper bounds; beyond the last: "20+"


def bucket(pre_ms: float) -> str:
    lo = 0.0
    for hi in PRE_MS_BUCKETS:
        if pre_ms < hi:
            return f"{lo:g}-{hi:g}"
        lo = hi
    return f"{lo:g}+"


class PartnerStats:
    def __init__(self, partners: list[str]):
        self.counts: dict[str, dict[str, Counter]] = {p: {} for p in partners}
        self.value_won: dict[str, dict[str, float]] = {p: {} for p in partners}
        self.skipped: dict[str, Counter] = {p: Counter() for p in partners}  # eligible, not called: why
        self.dropped: dict[str, Counter] = {p: Counter() for p in partners}  # bids dropped: why
        self.error_kinds: dict[str, Counter] = {p: Counter() for p in partners}
        self.requests: dict[str, Counter] = {}  # pre-fan-out bucket -> requests, bidders, partners
        self.bidders_hist: dict[str, Counter] = {}  # bucket -> number of bidders -> requests

    def c(self, partner: str, tier: str) -> Counter:
        t = self.counts[partner].get(tier)
        if t is None:
            t = self.counts[partner][tier] = Counter()
        return t

    def won(self, partner: str, tier: str, price: float) -> None:
        self.c(partner, tier)["won"] += 1
        v = self.value_won[partner]
        v[tier] = v.get(tier, 0.0) + price

    def request(self, pre_ms: float, partners: int, internal: bool) -> None:
        b = bucket(pre_ms)
        r = self.requests.setdefault(b, Counter())
        r["requests"] += 1
        r["partners_participating"] += partners
        n = partners + int(internal)
        r["bidders"] += n
        self.bidders_hist.setdefault(b, Counter())[n] += 1

    # -- views ------------------------------------------------------------------------------

    def snapshot(self, extra: dict[str, dict] | None = None) -> dict:
        """``/stats``'s ``partners``: per partner the six counters (all tiers), and beside them
        errors, value won, per-tier counts, why not called, why dropped; ``extra``: per partner
        fields to add (health: state, p95, cutoffs)."""
        out = {}
        for p, tiers in self.counts.items():
            total = Counter()
            for t in tiers.values():
                total.update(t)
            row = {k: total[k] for k in COUNTERS}
            row["errors"] = total["errors"]
            row["value_won"] = round(sum(self.value_won[p].values()), 6)
            row["tiers"] = {tier: {k: t[k] for k in (*COUNTERS, "errors")} for tier, t in tiers.items()}
            row["not_called"] = dict(self.skipped[p])
            row["dropped"] = dict(self.dropped[p])
            row["error_kinds"] = dict(self.error_kinds[p])
            row.update((extra or {}).get(p, {}))
            out[p] = row
        return out

    def participation(self) -> dict:
        """Per pre-fan-out bucket: requests, mean participating bidders, and the histogram."""
        out = {}
        for b, r in sorted(self.requests.items(), key=lambda kv: float(kv[0].split("-")[0].rstrip("+"))):
            n = r["requests"]
            out[b] = {"requests": n, "bidders_mean": round(r["bidders"] / n, 4) if n else None,
                      "partners_mean": round(r["partners_participating"] / n, 4) if n else None,
                      "bidders": {str(k): v for k, v in sorted(self.bidders_hist[b].items())}}
        return out

    def report(self, p95: dict[str, dict[str, float | None]], cutoffs: dict[str, dict[str, float]]) -> dict:
        """This replica's counts so far (cumulative, as its spend and opportunities are) per partner
        and tier, with the recent p95 and the cutoff in force: the region's report to control
        (``PartnerReport``). Control counts the growth since the replica's last report it saw, so a
        report sent again, or one whose answer was lost, is counted once."""
        out: dict[str, dict[str, PartnerTierStats]] = {}
        for p, tiers in self.counts.items():
            for tier, t in tiers.items():
                if not any(t[k] for k in (*COUNTERS, "errors")):
                    continue
                out.setdefault(p, {})[tier] = PartnerTierStats(
                    **{k: int(t[k]) for k in (*COUNTERS, "errors")},
                    value_won=round(self.value_won[p].get(tier, 0.0), 6),
                    p95_ms=p95.get(p, {}).get(tier), cutoff_ms=cutoffs.get(p, {}).get(tier, 0.0))
        return out
