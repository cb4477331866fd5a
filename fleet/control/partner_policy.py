"""Demand partners' cutoffs and shares, per tier, from what the regions measure (issue 21).

Regions report per partner and tier (``fleet.partners.messages.PartnerTierStats``, each
replica's counts so far): how often it was eligible, called, in time, late, in error,
participating, winning, the value it won, its recent p95 and the cutoff it was given. Control
takes each report's growth over the same replica's last one it saw (``records._delta``, as for
spend and opportunities: a report sent again, or after a lost answer, counts once; a replica that
restarted from zero is counted from its new totals on), sums the growth over regions into a
window per (partner, tier) and, every policy interval, judges each window that holds ``min_calls`` calls
(a window with fewer keeps accumulating, so a throttled partner on thin traffic is still judged,
later). ``decide`` (``fleet.control.partner_rule``) is the whole rule, a pure function; the book
keeps the state around it:

- **Late together: time taken upstream.** When at least ``starve_min`` partners, and at least
  ``starve_share`` of the partners on a tier, are judged late within ``starve_window_s``, the common cause is
  upstream (seed 001, failure chain 1: a slower enrichment leaves the fan-out less time, and
  partners that answer as fast as ever arrive late). A partner backing off for its own lateness
  counts too (a partner that always hangs can therefore make the tier look starved; excluding it
  let a real slowdown go unseen once every late partner was backing off). Throttling
  them would thin the auction further, so they keep their cutoffs and get their whole share
  (errors still count), and the tier is marked *starved* for ``starve_hold_s``:
  ``fleet.control.cutoffs.recompute`` then cuts its optional enrichment (to the floor share, not
  fed), which gives the partners their time back. When the hold lapses the share returns; if the
  cause persists the partners go late together again and it is cut again.
- **Pins.** An operator's pin (``PUT /control/v1/partners/{id}/{tier}``) is returned as pinned,
  never computed over.

``PartnerBook`` is control's state for it (windows, ceilings, backoffs, pins, the policy in force
and each region's cumulative counters for the dashboard); ``overlay`` writes the policy into the
tier policy documents control pushes by epoch (``tier["partners"][id]`` = PartnerCutoff fields).
"""

from __future__ import annotations

import copy
import math

import msgspec

from fleet.control.partner_rule import COUNTERS, Backoff, Params, Window, decide, defining_partners, recovered
from fleet.control.records import _delta
from fleet.partners.messages import PartnerCutoff, PartnerPolicy, PartnerTierStats, cutoff_from_value

REPLICA_GONE_S = 3600.0  # a replica not heard from this long is forgotten (as the pacer's books)


class PartnerBook:
    """Control's partner state: windows, ceilings, backoffs, pins, the policy, region counters."""

    def __init__(self, params: Params = Params()) -> None:
        self.p = params
        self.windows: dict[str, dict[str, Window]] = {}  # partner -> tier -> since last judged
        self.ceilings: dict[str, dict[str, float]] = {}  # partner -> tier -> ms
        self.backoffs: dict[str, dict[str, Backoff]] = {}
        self.pins: dict[str, dict[str, PartnerCutoff]] = {}
        self.policy: PartnerPolicy = {}  # what control computed last (pins included)
        self.why: dict[str, dict[str, str]] = {}
        # region -> partner -> cumulative counters (summed over tiers), p95 and cutoff last reported
        self.regions: dict[str, dict[str, dict]] = {}
        self.starved: dict[str, float] = {}  # tier -> its optional enrichment is cut until then
        self.late_at: dict[str, dict[str, float]] = {}  # tier -> partner -> when last judged late
        # "region|replica" -> {"t": last heard, "totals": {"partner|tier": {counter: last cumulative}}}
        self.seen: dict[str, dict] = {}

    # -- in ------------------------------------------------------------------------------------

    def absorb(self, region: str, replica: str, partners: dict[str, dict[str, PartnerTierStats]],
               now: float = 0.0) -> None:
        """One replica's report (its cumulative partner figures): the growth since its last report
        seen into the windows and the region's counters."""
        book = self.seen.setdefault(f"{region}|{replica}", {"t": now, "totals": {}})
        book["t"] = now
        for name in [n for n, b in self.seen.items() if now - b["t"] > REPLICA_GONE_S]:
            del self.seen[name]
        for pid, tiers in partners.items():
            for tier, cum in tiers.items():
                last = book["totals"].setdefault(f"{pid}|{tier}", {})
                totals = {k: float(getattr(cum, k)) for k in (*COUNTERS, "value_won")
                          if math.isfinite(getattr(cum, k))}
                grown = {k: _delta(totals, last, k) for k in totals}
                s = msgspec.structs.replace(cum, value_won=grown.pop("value_won", 0.0),
                                            **{k: int(v) for k, v in grown.items()})
                ws = self.windows.setdefault(pid, {})
                if tier not in ws:
                    ws[tier] = Window(opened=now)
                ws[tier].add(s, f"{region}|{replica}")
                pinned = tier in self.pins.get(pid, {})
                if not pinned and math.isfinite(s.cutoff_ms) and s.cutoff_ms > 0:
                    c = self.ceilings.setdefault(pid, {})
                    c[tier] = max(c.get(tier, 0.0), float(s.cutoff_ms))
                row = self.regions.setdefault(region, {}).setdefault(pid, {k: 0 for k in COUNTERS} | {"value_won": 0.0})
                for k in COUNTERS:
                    row[k] += max(0, int(getattr(s, k)))
                if math.isfinite(s.value_won) and s.value_won > 0:
                    row["value_won"] = round(row["value_won"] + s.value_won, 6)
                # only finite figures are kept: the book is saved as JSON, where NaN is not a number
                if s.p95_ms is not None and math.isfinite(s.p95_ms):
                    row["p95_ms"] = s.p95_ms
                if math.isfinite(s.cutoff_ms):
                    row.setdefault("cutoff_ms", {})[tier] = s.cutoff_ms

    def pending(self) -> bool:
        """Any window waiting to be judged."""
        return any(self.windows.values())

    # -- the computation ---------------------------------------------------------------------------

    def recompute(self, tiers: list[str], now: float, base: dict[str, dict] | None = None) -> PartnerPolicy:
        """Judge every window with enough calls; the policy after it (pins over everything).
        ``tiers`` richest first; ``base``: tier policies whose ``partners`` numbers are ceilings."""
        for tier, pol in (base or {}).items():
            for pid, v in (pol.get("partners") or {}).items():
                c = cutoff_from_value(v)
                if c is not None and not c.pinned and c.cutoff_ms > 0 and not isinstance(v, dict):
                    self.ceilings.setdefault(pid, {})[tier] = float(c.cutoff_ms)
        by_tier: dict[str, dict[str, Window]] = {}
        for pid, ws in self.windows.items():
            for tier, w in ws.items():
                by_tier.setdefault(tier, {})[pid] = w
        policy: PartnerPolicy = copy.deepcopy(self.policy)
        for tier, ws in by_tier.items():
            rank = tiers.index(tier) if tier in tiers else len(tiers) - 1
            defining = defining_partners(ws, self.p.defining_share)
            judged = [pid for pid, w in ws.items() if w.called >= self.p.min_calls
                      and tier not in self.pins.get(pid, {}) and self.ceilings.get(pid, {}).get(tier)]
            late = {pid for pid in judged if ws[pid].late / ws[pid].called > self.p.late_limit
                    and not recovered(ws[pid], self.p)}
            together = self._late_together(tier, late, set(judged), now, policy)
            for pid, w in ws.items():
                if tier in self.pins.get(pid, {}):
                    del self.windows[pid][tier]  # pinned: the operator's word, not judged
                    continue
                ceiling = self.ceilings.get(pid, {}).get(tier)
                if w.called < self.p.min_calls or not ceiling:
                    continue  # not enough to judge yet: the window keeps filling
                prev = self.policy.get(pid, {}).get(tier)
                bo = self.backoffs.get(pid, {}).get(tier, Backoff())
                c, bo, why = decide(w, ceiling_ms=ceiling, rank=rank, tiers=max(len(tiers), 1),
                                    defining=pid in defining, prev=prev, backoff=bo, now=now, p=self.p,
                                    starved=pid in together)
                policy.setdefault(pid, {})[tier] = c
                self.backoffs.setdefault(pid, {})[tier] = bo
                self.why.setdefault(pid, {})[tier] = why
                del self.windows[pid][tier]
        for pid, ts in self.pins.items():
            for tier, c in ts.items():
                policy.setdefault(pid, {})[tier] = c
        self.policy = policy
        return policy

    def _late_together(self, tier: str, late: set[str], judged: set[str], now: float,
                       policy: PartnerPolicy) -> set[str]:
        """The tier's partners late together (else none): judged late within ``starve_window_s``
        (windows fill at their own pace, so they are judged at different ticks), at least
        ``starve_min`` of them and ``starve_share`` of the partners on the tier. If so, the tier is
        marked starved and the ones judged late alone before are given their share back.
        A partner backing off for its own lateness counts like any other: excluding it let a real
        slowdown upstream go unseen once every late partner was backing off (review, 2026-12-05)."""
        seen = self.late_at.setdefault(tier, {})
        for pid in judged:
            seen.pop(pid, None)
        seen.update({pid: now for pid in late})
        recent = {pid for pid, t in seen.items() if now - t <= self.p.starve_window_s}
        on_tier = {pid for pid, cs in self.ceilings.items() if tier in cs and tier not in self.pins.get(pid, {})}
        if len(recent) < self.p.starve_min or len(recent) < self.p.starve_share * max(len(on_tier), 1):
            return set()
        self.starved[tier] = now + self.p.starve_hold_s
        for pid in recent - judged:
            bo = self.backoffs.get(pid, {}).get(tier)
            c = policy.get(pid, {}).get(tier)
            if bo is not None and bo.cause == "late" and c is not None and not c.pinned:
                self.backoffs[pid][tier] = Backoff()
                policy[pid][tier] = PartnerCutoff(cutoff_ms=c.cutoff_ms, share=1.0)
                self.why.setdefault(pid, {})[tier] = "late with the tier's other partners: time taken upstream"
        return recent

    def tiers(self) -> set[str]:
        """The tiers some partner is called on (their optional enrichment is never fed)."""
        return {t for cs in self.ceilings.values() for t in cs}

    def cut_tiers(self, now: float) -> set[str]:
        """The tiers whose optional enrichment is cut now (their partners were late together)."""
        return {t for t, until in self.starved.items() if now < until}

    def pin(self, pid: str, tier: str, body: dict) -> PartnerCutoff:
        """An operator's pin: ``cutoff_ms`` (0: do not call) and optionally ``share``."""
        unknown = set(body) - {"cutoff_ms", "share"}
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        c = cutoff_from_value({"cutoff_ms": body.get("cutoff_ms"), "share": body.get("share", 1.0)})
        if c is None:
            raise ValueError("cutoff_ms must be a number >= 0 and share a number in [0, 1]")
        c.pinned = True
        self.pins.setdefault(pid, {})[tier] = c
        self.policy.setdefault(pid, {})[tier] = c
        return c

    def unpin(self, pid: str, tier: str) -> bool:
        """Back to the computation (the last computed entry is dropped; the next judged window
        sets one; until then the region's own default holds)."""
        if tier not in self.pins.get(pid, {}):
            return False
        del self.pins[pid][tier]
        self.policy.get(pid, {}).pop(tier, None)
        return True

    def overlay(self, policies: dict[str, dict]) -> dict[str, dict]:
        """``policies`` (tier -> policy) with each tier's ``partners`` set from the policy:
        entries computed or pinned before are replaced (an unpinned entry leaves), bare numbers
        (ceilings from the base) are kept for partners without an entry."""
        out = copy.deepcopy(policies)
        for pol in out.values():
            if isinstance(pol.get("partners"), dict):
                pol["partners"] = {pid: v for pid, v in pol["partners"].items() if not isinstance(v, dict)}
                if not pol["partners"]:
                    del pol["partners"]
        for pid, ts in self.policy.items():
            for tier, c in ts.items():
                if tier in out:
                    out[tier].setdefault("partners", {})[pid] = msgspec.structs.asdict(c)
        return out

    # -- out -----------------------------------------------------------------------------------

    def view(self) -> dict:
        return {"policy": {pid: {t: msgspec.structs.asdict(c) | {"why": self.why.get(pid, {}).get(t, "pinned" if c.pinned else "")}
                                 for t, c in ts.items()} for pid, ts in self.policy.items()},
                "pins": {pid: {t: msgspec.structs.asdict(c) for t, c in ts.items()} for pid, ts in self.pins.items()},
                "ceilings": copy.deepcopy(self.ceilings), "starved_until": dict(self.starved),
                "backoffs": {pid: {t: msgspec.structs.asdict(b) for t, b in ts.items()} for pid, ts in self.backoffs.items()},
                "regions": copy.deepcopy(self.regions)}

    def to_dict(self) -> dict:
        def enc(d):
            return {pid: {t: msgspec.structs.asdict(x) for t, x in ts.items()} for pid, ts in d.items()}
        return {"ceilings": self.ceilings, "backoffs": enc(self.backoffs), "pins": enc(self.pins),
                "policy": enc(self.policy), "regions": self.regions, "starved": self.starved, "seen": self.seen}

    @classmethod
    def from_dict(cls, d: dict, params: Params = Params()) -> "PartnerBook":
        b = cls(params)

        def dec(src, typ):
            return {pid: {t: msgspec.convert(x, typ) for t, x in ts.items()} for pid, ts in (src or {}).items()}
        b.ceilings = {pid: {t: float(v) for t, v in ts.items()} for pid, ts in (d.get("ceilings") or {}).items()}
        b.backoffs = dec(d.get("backoffs"), Backoff)
        b.pins = dec(d.get("pins"), PartnerCutoff)
        b.policy = dec(d.get("policy"), PartnerCutoff)
        b.regions = d.get("regions") or {}
        b.starved = {t: float(u) for t, u in (d.get("starved") or {}).items()}
        b.seen = d.get("seen") or {}  # without it a restart would count every replica's totals again
        return b
