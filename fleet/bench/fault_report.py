"""The fault bench's figures: per phase at the simulated exchange (client side, network time
included), the targets of issue 23 judged against the same run's healthy baseline, and the
failover timeline plot.

A partner scenario adds the hung partner's counters per phase (``partner_figures``, from control's
per-region counters: how often it was called, in time, late, participating) and two targets: the
hang adding no more than the partner's cutoff to the p99 at the exchange (stage 6 waits for a
partner at most its cutoff, and never past the request's deadline), and the partner answering in
time again once released (its in-time share of calls after the hang at least 0.9 of the
baseline's: the tail throttle re-measures it and lets it back).

The region loss adds the lost region's own readiness once it is deployed again (``readiness``:
when ``/<region>/ready`` said ready, and what it said until then).

Value per opportunity is the expected value (true click probability times the click's value,
``fleet.sim.scorecard.impression_value``) of the impressions the fleet won, over every auction
sent in the phase, answered or not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fleet.sim.exchange import AuctionRecord

ON_TIME = 0.999  # share of auctions answered within tmax at the exchange
VALUE = 0.90  # value per opportunity against the baseline
RESUME_S = 5.0  # region loss: answers from the next region within this
SHED_MS = 5.0  # a shed request's answer
RECOVERED = 0.9  # a released partner's in-time share of calls, against the baseline's, at least this
PARTNER_COUNTERS = ("eligible", "called", "in_time", "late", "errors", "participating", "won")


def phase(records: list[AuctionRecord], lo: float, hi: float, value_of) -> dict:
    """Figures of the auctions sent in ``[lo, hi)`` seconds into the run."""
    rs = [r for r in records if lo <= r.t < hi]
    n = len(rs)
    answered = [r for r in rs if r.status in (200, 204)]
    on_time = [r for r in answered if not r.late]
    bids = [r for r in on_time if r.status == 200]
    degraded = Counter(k for r in answered for k in r.degraded)
    shed = [r for r in answered if r.reason == "overload"]
    lat = sorted(r.latency_ms for r in answered)
    value = sum(value_of(r) for r in rs if r.won)

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    secs = max(hi - lo, 1e-9)
    return {
        "from_s": round(lo, 1), "to_s": round(hi, 1), "auctions": n,
        "offered_per_s": round(n / secs, 2),
        "on_time_share": round(len(on_time) / n, 5) if n else None,
        "on_time_per_s": round(len(on_time) / secs, 2),
        "bid_rate": round(len(bids) / n, 5) if n else None,
        "degraded_share": round(sum(1 for r in answered if r.degraded) / len(answered), 5) if answered else None,
        "degraded_kinds": dict(degraded.most_common(8)),
        "value_per_opportunity": round(value / n, 8) if n else None,
        "status": {str(k): v for k, v in sorted(Counter(r.status for r in rs).items())},
        "5xx": sum(1 for r in rs if r.status >= 500),
        "late": sum(1 for r in answered if r.late),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat[-1] if lat else None},
        "shed": len(shed), "shed_max_ms": round(max(r.server_ms for r in shed), 3) if shed else None,
        "by_region": dict(Counter(r.region for r in rs)),
    }


def resume(records: list[AuctionRecord], lost: str, t_kill: float) -> dict:
    """For the auctions meant for ``lost``: when they were first answered on time by another
    region after the kill, and the gap: from the last on-time answer by ``lost`` itself (the
    region serves on while it is being removed: a command that takes seconds) to that first one
    elsewhere, how long its auctions went unanswered. The target is judged on the gap."""
    meant = [r for r in records if r.opp.region == lost and r.t >= t_kill]
    ok = [r for r in meant if r.status in (200, 204) and not r.late]
    other = [r for r in ok if r.region != lost]
    first = min((r.t for r in other), default=None)
    unanswered = [r for r in meant if first is None or r.t < first]
    # The loss as the exchanges saw it: the first auction sent to it that got no answer (the
    # region serves on while it is being removed).
    failed = min((r.t for r in meant if r.region == lost and r.status not in (200, 204)), default=None)
    last = max((r.t for r in ok if r.region == lost and (first is None or r.t < first)), default=t_kill)
    return {"region": lost, "kill_at_s": round(t_kill, 2),
            "gap_s": None if first is None else round(first - last, 2),
            "first_on_time_elsewhere_s": None if first is None else round(first - t_kill, 2),
            "first_failed_s": None if failed is None else round(failed - t_kill, 2),
            "unanswered_before": sum(1 for r in unanswered if not (r.status in (200, 204) and not r.late)),
            "answered_elsewhere": len(other),
            "answered_elsewhere_on_time_share": round(len(other) / sum(1 for r in meant if r.region != lost), 4)
            if any(r.region != lost for r in meant) else None}


def readiness(samples: list[tuple[float, int, str]], restore_at: float | None) -> dict:
    """The lost region's own ``/<region>/ready`` after it was deployed again, from samples of
    (t, HTTP status or 0, what a not-ready answer said: ``warm_error``/``model_error``, or the
    body): when it first said ready, how long after the restore, and every different reason it
    gave before (in order, with its first time and count), so a region that stays not ready
    says why in the result, and one that never answered says that."""
    if restore_at is None:
        return {"restore_at_s": None}
    after = [(t, st, why) for t, st, why in samples if t >= restore_at]
    ready_at = next((t for t, st, _ in after if st == 200), None)
    said: dict[str, dict] = {}
    for t, st, why in after:
        if ready_at is not None and t >= ready_at:
            break
        key = f"{st} {why}".strip() if st else f"no answer {why}".strip()
        said.setdefault(key, {"first_s": t, "n": 0})["n"] += 1
    return {"restore_at_s": restore_at, "ready_at_s": ready_at, "samples": len(after),
            "ready_after_restore_s": None if ready_at is None else round(ready_at - restore_at, 2),
            "not_ready_said": [{"said": k, **v} for k, v in said.items()]}


PARTNER_VIEW_LAG_S = 4.0  # a call shows in control's view after the replica's next report (1 s) and the next sample (2 s)


def partner_figures(samples: list[tuple[float, dict]], pid: str, phases: dict[str, tuple[float, float]],
                    lag_s: float = PARTNER_VIEW_LAG_S) -> dict:
    """Partner ``pid``'s counters per phase, summed over regions, from samples of control's
    ``GET /v1/partners`` (cumulative per region: a phase is the growth from the last sample at or
    before its start to the last at or before its end, both ``lag_s`` later: the calls of a
    phase's last seconds reach control's view after it), its largest cutoff before the first
    phase ended, and every change of control's policy for it (cutoff ms x share, per tier)."""
    def total(view: dict) -> dict:
        rows = [r.get(pid) or {} for r in (view.get("regions") or {}).values()]
        return {k: sum(int(r.get(k, 0)) for r in rows) for k in PARTNER_COUNTERS}

    def upto(t: float) -> dict:
        seen = [v for ts, v in samples if ts <= t]
        return total(seen[-1]) if seen else dict.fromkeys(PARTNER_COUNTERS, 0)

    out = {}
    for name, (lo, hi) in phases.items():
        a, b = upto(lo + lag_s), upto(hi + lag_s)
        d = {k: b[k] - a[k] for k in PARTNER_COUNTERS}
        d["called_share"] = round(d["called"] / d["eligible"], 4) if d["eligible"] else None
        d["in_time_share"] = round(d["in_time"] / d["called"], 4) if d["called"] else None
        out[name] = d
    first_end = min((hi for _, hi in phases.values()), default=0.0)
    cutoffs = [float(c) for ts, v in samples if ts <= first_end for r in (v.get("regions") or {}).values()
               for c in ((r.get(pid) or {}).get("cutoff_ms") or {}).values()]
    changes, last = [], None
    for t, v in samples:
        mine = (v.get("policy") or {}).get(pid) or {}
        pol = {tier: f"{c['cutoff_ms']:g} ms x {c['share']:g}" for tier, c in sorted(mine.items())}
        if pol != last:
            changes.append({"t": t, "policy": pol, "why": {tier: c.get("why", "") for tier, c in mine.items()}})
            last = pol
    return {"partner": pid, "cutoff_ms": max(cutoffs, default=None), "phases": out, "policy_changes": changes}


def notice_5xx(doc: dict) -> int:
    """Notices the fleet answered with a 5xx (the exchange sends them again)."""
    return sum(n for k, n in doc["money"].get("notice_errors", {}).items() if k.rsplit(".", 1)[-1].startswith("5"))


def targets(doc: dict) -> dict:
    """Issue 23's targets, each with its figure and whether it was met."""
    base, fault = doc["phases"]["baseline"], doc["phases"]["fault"]
    five = sum(p["5xx"] for p in doc["phases"].values()) + notice_5xx(doc)
    out = {
        "on_time_share>=0.999": {"value": fault["on_time_share"], "met": (fault["on_time_share"] or 0) >= ON_TIME},
        "zero_5xx": {"value": five, "met": five == 0},
        "zero_events_lost": {"value": doc["money"]["events_lost"], "met": doc["money"]["events_lost"] == 0},
        "no_campaign_over_budget": {"value": doc["money"]["over_budget_samples"],
                                    "met": doc["money"]["over_budget_samples"] == 0},
    }
    if base["value_per_opportunity"]:
        ratio = (fault["value_per_opportunity"] or 0.0) / base["value_per_opportunity"]
        out["value_per_opportunity>=0.9x_baseline"] = {"value": round(ratio, 4), "met": ratio >= VALUE}
    if "failover" in doc:
        res = doc["failover"]["resume"]
        s = res["gap_s"] if "gap_s" in res else res["first_on_time_elsewhere_s"]
        out["answers_resume_within_5s"] = {"value": s, "met": s is not None and s <= RESUME_S}
    if "partners" in doc:
        pp = doc["partners"]["phases"]
        before, after = pp["baseline"]["in_time_share"], pp["after"]["in_time_share"] if "after" in pp else None
        ratio = round(after / before, 4) if before and after is not None else None
        out["hung_partner_answers_again"] = {"value": ratio, "met": ratio is not None and ratio >= RECOVERED}
        cut, p99b, p99f = doc["partners"]["cutoff_ms"], base["latency_ms"]["p99"], fault["latency_ms"]["p99"]
        added = round(p99f - p99b, 2) if p99b is not None and p99f is not None else None
        out["added_p99_ms<=hung_partner_cutoff"] = {"value": added, "met": added is not None and cut is not None
                                                    and added <= cut}
    if fault["shed"]:
        out["shed_answered_under_5ms"] = {"value": fault["shed_max_ms"], "met": fault["shed_max_ms"] < SHED_MS}
    return out


def timeline_plot(records: list[AuctionRecord], doc: dict, path: Path) -> Path:
    """Per second: auctions answered on time by each region, and the share on time of those meant
    for the lost region; the kill, the DNS's changes, control's re-lease and the restore marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fo = doc["failover"]
    lost = fo["resume"]["region"]
    end = int(max((r.t for r in records), default=0)) + 1
    by_region: dict[str, list[int]] = {}
    meant_n, meant_ok = [0] * end, [0] * end
    for r in records:
        s = int(r.t)
        ok = r.status in (200, 204) and not r.late
        if ok:
            by_region.setdefault(r.region, [0] * end)[s] += 1
        if r.opp.region == lost:
            meant_n[s] += 1
            meant_ok[s] += ok
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for region, ys in sorted(by_region.items()):
        a1.plot(range(end), ys, label=f"answered on time by {region}")
    a1.set_ylabel("auctions / s")
    a1.legend(fontsize=8, loc="upper right")
    a2.plot(range(end), [ok / n if n else None for ok, n in zip(meant_ok, meant_n)], color="k")
    a2.set_ylabel(f"on-time share, meant for {lost}")
    a2.set_xlabel("seconds into the run")
    a2.set_ylim(-0.05, 1.05)
    marks = [(fo["resume"]["kill_at_s"], f"{lost} removed", "r")]
    marks += [(e["t"], f"DNS: {e['region']} {e['event']}", "b") for e in fo["dns_events"]]
    ej = fo.get("ejection_events", [])  # the exchanges' ejector: its first ejection and each readmission
    marks += [(e["t"], f"exchange: {e['region']} {e['event']}", "tab:orange") for i, e in enumerate(ej)
              if e["event"] == "readmitted" or not any(p["event"] == "ejected" for p in ej[:i])]
    marks += [(e["t"], "control: " + (", ".join(f"{k}->{v}" for k, v in e["failover"].items()) or "slices back"), "g")
              for e in fo["control_changes"]]
    if fo.get("restore_at_s") is not None:
        marks.append((fo["restore_at_s"], f"{lost} deployed again", "m"))
    for t, label, color in marks:
        for ax in (a1, a2):
            ax.axvline(t, color=color, linestyle="--", linewidth=0.8)
        a1.annotate(label, (t, a1.get_ylim()[1]), rotation=90, fontsize=7, va="top", ha="right", color=color)
    how = (f"ejection after {fo['ejection']['consecutive']} failures, then " if "ejection" in fo else "")
    a1.set_title(f"Region loss: {lost} removed; exchanges fail over by {how}DNS (interval {fo['dns']['interval_s']:.0f} s, "
                 f"threshold {fo['dns']['threshold']}, TTL {fo['dns']['ttl_s']:.0f} s)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
