"""Reconciliation: per campaign and window, do selection, pacing and billing agree?

For each campaign and window: selected, won, billed, lost, expired counts; reserved, released and
finalized spend; the reservations still open; and, per campaign today, pacing's view (what the
bidder replicas publish in ``fleet:<region>:pacing:<replica>``) against the ledger's, like with
like. A replica's hash says what it holds in ``_kind``:
- ``billed`` (spending under control's leases): billed spend for bids made today, compared with
  the ledger's finalized spend for bids of today (``spend:<today>``, by the bid's day);
- ``reserved`` (the local allowance, and any hash without ``_kind``, from older replicas): what
  it reserved today, compared with the ledger's reservations today.
Flags:
- ``billed>won``: more billing notices than wins (notices lost, or not the exchange's);
- ``won>selected``: wins for bids the ledger never saw selected (events lost upstream);
- ``billed_after_lost``: a bill for a bid the ledger had closed as lost (counted: the exchange
  says it charged);
- ``unpriced``: bills whose price could not be read, counted at our bid (an upper bound): to be
  reconciled with the exchange's invoice;
- per campaign today, ``flag`` (``DRIFT`` in the CLI): pacing's view and the ledger's differ by
  more than the tolerance.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from fleet.ledger.consumer import ledger_prefix

COUNTS = ("selected", "won", "billed", "lost", "expired", "clicks", "ivt", "billed_after_lost", "unpriced", "test")
AMOUNTS = ("reserved", "released", "spend")
KINDS = ("billed", "reserved")  # what a replica's pacing view holds


@dataclass
class Row:
    campaign: str
    window: int  # start, unix seconds
    selected: int = 0
    won: int = 0
    billed: int = 0
    lost: int = 0
    expired: int = 0
    clicks: int = 0
    ivt: int = 0
    billed_after_lost: int = 0
    unpriced: int = 0
    test: int = 0
    reserved: float = 0.0
    released: float = 0.0
    spend: float = 0.0
    flags: list[str] = field(default_factory=list)


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def ledger_rows(r, region: str, window_s: int = 600, since: float = 0.0) -> list[Row]:
    """Aggregates from Redis (a sync client) grouped into windows of ``window_s``."""
    p = ledger_prefix(region)
    rows: dict[tuple[str, int], Row] = {}
    for cid in sorted(_s(c) for c in r.smembers(p + "campaigns")):
        for key in r.scan_iter(match=f"{p}agg:{cid}:*", count=1000):
            minute = int(_s(key).rsplit(":", 1)[1])
            if minute * 60 < since:
                continue
            w = minute * 60 // window_s * window_s
            row = rows.setdefault((cid, w), Row(cid, w))
            for k, v in r.hgetall(key).items():
                k = _s(k)
                if k in COUNTS:
                    setattr(row, k, getattr(row, k) + int(v))
                elif k in AMOUNTS:
                    setattr(row, k, getattr(row, k) + float(v))
    out = sorted(rows.values(), key=lambda x: (x.campaign, x.window))
    for row in out:
        if row.billed > row.won:
            row.flags.append("billed>won")
        if row.won > row.selected:
            row.flags.append("won>selected")
        if row.billed_after_lost:
            row.flags.append("billed_after_lost")
        if row.unpriced:
            row.flags.append("unpriced")
    return out


def pacing_view(r, region: str) -> dict[str, dict[str, float]]:
    """Pacing's view today per kind (``billed``, ``reserved``) and campaign, summed over the
    region's replicas; a hash without ``_kind`` counts as ``reserved``."""
    total: dict[str, dict[str, float]] = {}
    for key in r.scan_iter(match=f"fleet:{region}:pacing:*", count=1000):
        h = {_s(k): v for k, v in r.hgetall(key).items()}
        kind = _s(h.pop("_kind", b"reserved"))
        view = total.setdefault(kind if kind in KINDS else "reserved", defaultdict(float))
        for cid, v in h.items():
            view[cid] += float(v)
    return {k: dict(v) for k, v in total.items()}


def report(r, region: str, window_s: int = 600, tolerance: float = 0.02, day_start: float | None = None) -> dict:
    import time

    day_start = day_start if day_start is not None else time.time() // 86_400 * 86_400
    rows = ledger_rows(r, region, window_s)
    pacing = pacing_view(r, region)
    today: dict[str, dict[str, float]] = defaultdict(lambda: {"reserved": 0.0, "released": 0.0})
    for row in rows:
        if row.window >= day_start:
            t = today[row.campaign]
            t["reserved"] += row.reserved
            t["released"] += row.released
    # finalized spend for bids of today (a bill counts on its bid's day; IVT reversals netted)
    finalized = {_s(k): float(v) for k, v in
                 r.hgetall(f"{ledger_prefix(region)}spend:{int(day_start // 86_400)}").items()}
    # What each kind is compared with. With no view published at all, the ledger's reservations
    # stand against nothing (a region whose replicas publish nothing is flagged, as before).
    ledger_of = {"billed": finalized, "reserved": {c: t["reserved"] for c, t in today.items()}}
    kinds = [k for k in KINDS if k in pacing] or ["reserved"]
    campaigns = {}
    for cid in sorted(set(today) | set(finalized) | {c for v in pacing.values() for c in v}):
        t = today[cid]
        entry = {"open": round(t["reserved"] - t["released"], 6), "finalized": round(finalized.get(cid, 0.0), 6),
                 "ledger_reserved": round(t["reserved"], 6), "drift": 0.0, "flag": False, "views": {}}
        for kind in kinds:
            held = pacing.get(kind, {}).get(cid, 0.0)
            ledger_view = ledger_of[kind].get(cid, 0.0)
            drift = abs(held - ledger_view) / max(ledger_view, held, 1e-9)
            entry["views"][kind] = {"pacing": round(held, 6), "ledger": round(ledger_view, 6),
                                    "drift": round(drift, 4), "flag": drift > tolerance}
            entry["drift"] = max(entry["drift"], round(drift, 4))
            entry["flag"] = entry["flag"] or drift > tolerance
        if "reserved" in entry["views"]:  # the older report's fields
            entry["pacing_reserved"] = entry["views"]["reserved"]["pacing"]
        campaigns[cid] = entry
    return {"region": region, "window_s": window_s, "tolerance": tolerance,
            "rows": [asdict(x) for x in rows], "today": campaigns,
            "flagged": sorted({x.campaign for x in rows if x.flags} | {c for c, v in campaigns.items() if v["flag"]})}
