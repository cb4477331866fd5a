"""Demand partners' cutoffs and shares, per tier, from what the regions measure (issue 21).

Regions report per partner and tier (``fleet.partners.messages.PartnerTierStats``, each
replica's counts so far): how often it was eligible, called, in time, late, in error,
participating, winning, the value it won, its recent p95 and the cutoff it was given. Control
takes each report's growth over the same replica's last one it saw (``records._delta``, as for
spend and opportunities: a report sent again, or after a lost answer, counts once; a replica that
restarted from zero is counted from its new totals on), sums the growth over regions into a
window per (partner, tier) and, every policy interval, judges each window that holds ``min_calls`` calls
(a window with fewer keeps accumulating, so a throttled partner on thin traffic is still judged,
later). ``decide`` is the whole rule, a pure function:

- **Ceiling.** The most a partner is ever given on a tier: the largest cutoff a region reported
  using without a pin (the ``regions.yaml`` default: control never pushes above it, so the
  maximum stays the default), or a number in the tier policy's ``partners``.
- **Time by value.** A partner *defines* a tier's competition when it won at least
  ``defining_share`` of the value partners won there (by participation when none won anything).
  On the richest tier a defining partner keeps its ceiling: premium inventory keeps time for the
  bidders that make its price. Elsewhere a partner gets what it needs, ``p95 x margin``, and a
  slow partner that does not define the tier gets at most ``ceiling x fraction``, the fraction
  falling linearly from 1 (richest tier) to ``lowest_fraction`` (poorest): a slow partner that
  rarely wins stops holding remnant requests.
- **Tail and errors: a circuit breaker.** A partner late on more than ``late_limit`` of its calls
  (its p95 past its cutoff) or in error on more than ``error_limit`` is throttled to
  ``probe_share`` (about 10% still sent, to re-measure it) and backed off for ``backoff_s``
  (open). Trouble judged while the backoff runs is the probe re-measuring the known fault: it
  does not lengthen it. Once it ran out, the first window opened after it is the trial
  (half-open): troubled, the backoff doubles (up to ``max_backoff_s``); clean, the share comes
  back (closed). A window whose latest ``recover_calls`` calls or more were all in time, in the
  reports of every replica that reported in it, is clean (a hang that ended mid-window is over):
  the partner answering again gets its share back at the first judgement after its backoff. Its
  failed trials are kept until it has been clean for ``forgive_s``: one that goes bad again soon
  after starts from the backoff it had reached (a flapping partner backs off longer each time).
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
- Cutoffs are rounded up to ``quantum_ms`` and moved only by more than ``hysteresis`` of the last
  one, so a p95's noise leaves the policy, and its epoch, alone.

``PartnerBook`` is control's state for it (windows, ceilings, backoffs, pins, the policy in force
and each region's cumulative counters for the dashboard); ``overlay`` writes the policy into the
tier policy documents control pushes by epoch (``tier["partners"][id]`` = PartnerCutoff fields).
"""

from __future__ import annotations

import copy
import math

import msgspec

from fleet.control.records import _delta
from fleet.partners.messages import PartnerCutoff, PartnerPolicy, PartnerTierStats, cutoff_from_value

MAX_LEVEL = 16  # failed trials counted at most (2**16 x backoff_s is far past max_backoff_s)
COUNTERS = ("eligible", "called", "in_time", "late", "errors", "participating", "won")
REPLICA_GONE_S = 3600.0  # a replica not heard from this long is forgotten (as the pacer's books)


class Params(msgspec.Struct, frozen=True, kw_only=True):
    min_calls: int = 30  # calls before a (partner, tier) window is judged
    margin: float = 1.25  # a partner is given its p95 x margin (below its ceiling)
    late_limit: float = 0.05  # late on more than this share of calls: its p95 is past its cutoff
    error_limit: float = 0.05
    probe_share: float = 0.1  # what a throttled partner is still sent, to re-measure it
    backoff_s: float = 30.0  # the first backoff (one policy interval); doubles per failed trial
    recover_calls: int = 15  # a window's latest calls all in time, at least this many: recovered
    max_backoff_s: float = 600.0
    forgive_s: float = 600.0  # clean this long after its last backoff ran out: its failed trials are forgotten
    defining_share: float = 0.15  # of the tier's partner value won: defines its competition
    lowest_fraction: float = 0.5  # the poorest tier gives a slow non-defining partner this x ceiling
    min_cutoff_ms: float = 5.0
    quantum_ms: float = 1.0
    hysteresis: float = 0.1  # a computed cutoff within this share of the last one keeps the last
    starve_min: int = 2  # partners late together on a tier: a cause upstream of the fan-out...
    starve_share: float = 0.5  # ...when they are at least this share of the tier's judged partners
    starve_hold_s: float = 120.0  # a starved tier's optional enrichment stays cut this long
    starve_window_s: float = 90.0  # partners judged late within this long count as late together


class Window(msgspec.Struct, kw_only=True):
    """One (partner, tier) summed over regions since it was last judged."""

    eligible: int = 0
    called: int = 0
    in_time: int = 0
    late: int = 0
    errors: int = 0
    participating: int = 0
    won: int = 0
    value_won: float = 0.0
    p95_ms: float | None = None  # the worst region's (a cutoff must hold where the partner is slowest)
    cutoff_ms: float = 0.0  # the largest cutoff a region used
    # per reporting replica ("region|replica"): its calls since its last report with a late call
    # or an error. Per replica, not summed: one region's clean reports arriving after another's
    # late ones say nothing of the other region (a partner may hang in one region only).
    clean: dict[str, int] = {}
    opened: float | None = None  # unix s of its first report (None: unknown, judged as fresh)

    @property
    def clean_calls(self) -> int:
        """The clean tail's calls when every replica that reported in the window ends clean, else 0."""
        return sum(self.clean.values()) if self.clean and min(self.clean.values()) > 0 else 0

    def add(self, s: PartnerTierStats, source: str = "") -> None:
        for k in COUNTERS:
            setattr(self, k, getattr(self, k) + max(0, int(getattr(s, k))))
        # The recent probes, in report order: a report with any late call or error starts over.
        self.clean[source] = 0 if s.late > 0 or s.errors > 0 else self.clean.get(source, 0) + max(0, int(s.called))
        if math.isfinite(s.value_won) and s.value_won > 0:
            self.value_won += s.value_won
        if s.p95_ms is not None and math.isfinite(s.p95_ms) and s.p95_ms >= 0:
            self.p95_ms = s.p95_ms if self.p95_ms is None else max(self.p95_ms, s.p95_ms)
        if math.isfinite(s.cutoff_ms) and s.cutoff_ms > self.cutoff_ms:
            self.cutoff_ms = s.cutoff_ms


class Backoff(msgspec.Struct, kw_only=True):
    level: int = 0  # failed trials (1: backing off after the first trouble); kept until clean for forgive_s
    until: float = 0.0  # unix s: throttled at least until then
    cause: str = ""  # "late" or "errors"


def recovered(w: Window, p: Params) -> bool:
    """Its latest ``recover_calls`` calls or more were all in time: trouble earlier in the window is over."""
    return w.clean_calls >= p.recover_calls


def tier_fraction(rank: int, tiers: int, lowest: float) -> float:
    """1 for the richest tier (rank 0), ``lowest`` for the poorest, linear between."""
    return 1.0 if tiers <= 1 else 1.0 - (1.0 - lowest) * rank / (tiers - 1)


def decide(w: Window, *, ceiling_ms: float, rank: int, tiers: int, defining: bool,
           prev: PartnerCutoff | None, backoff: Backoff, now: float,
           p: Params = Params(), starved: bool = False) -> tuple[PartnerCutoff, Backoff, str]:
    """One partner's cutoff and share on one tier from its judged window; the new backoff; why.
    ``starved``: late together with the tier's other partners (the cause is upstream)."""
    called = max(w.called, 1)
    late_share, error_share = w.late / called, w.errors / called
    used = w.cutoff_ms or (prev.cutoff_ms if prev else ceiling_ms)
    # Past its cutoff: its p95 is the cutoff exactly when more than 5% are late. Read from the
    # window's own counts, not the region's rolling p95, which still holds lates from before.
    fresh = recovered(w, p)
    past_cutoff = late_share > p.late_limit and not fresh
    erring = error_share > p.error_limit and not fresh
    if starved and not erring:  # its lateness is not its own: not throttled (a lateness backoff ends), not re-timed
        keep = prev or PartnerCutoff(cutoff_ms=ceiling_ms)
        if backoff.cause == "errors" and now < backoff.until:
            return PartnerCutoff(cutoff_ms=keep.cutoff_ms, share=p.probe_share), backoff, "backing off (errors)"
        return (PartnerCutoff(cutoff_ms=keep.cutoff_ms, share=1.0), Backoff(),
                "late %.1f%% with the tier's other partners: time taken upstream" % (100 * late_share))
    if past_cutoff or erring:
        trouble = ("errors %.1f%%" % (100 * error_share)) if erring else ("late %.1f%%" % (100 * late_share))
        share = p.probe_share
        if backoff.level > 0 and (now < backoff.until or (w.opened is not None and w.opened < backoff.until)):
            # Open: the probe re-measuring the known fault (or a window begun before the backoff ran
            # out, not yet the trial) neither lengthens the backoff nor gives the share back.
            why = f"backing off ({trouble})"
        else:  # the first trouble, or a failed trial (half-open): back off, doubling
            wait = min(p.backoff_s * 2 ** min(backoff.level, MAX_LEVEL), p.max_backoff_s)
            backoff = Backoff(level=min(backoff.level + 1, MAX_LEVEL), until=now + wait,
                              cause="errors" if erring else "late")
            why = trouble
    elif now < backoff.until:
        share, why = p.probe_share, "backing off"
    else:
        closing = fresh and backoff.level > 0 and prev is not None and prev.share < 1.0
        why = "answering again: the last %d calls in time" % w.clean_calls if closing else "healthy"
        share = 1.0
        # Closed. Its failed trials are kept until it has been clean for ``forgive_s``: a partner
        # that goes bad again soon after starts from the backoff it had reached, so one that flaps
        # between slow and fine backs off longer each time instead of starting over at 30 s.
        if backoff.level > 0 and now - backoff.until >= p.forgive_s:
            backoff = Backoff()
    # What it needs: its p95 with a margin (a late p95 is the cutoff itself: ask for more, up to the ceiling).
    need = (w.p95_ms if w.p95_ms is not None else used) * p.margin
    cap = ceiling_ms * tier_fraction(rank, tiers, p.lowest_fraction)
    if defining and rank == 0:
        cutoff = ceiling_ms  # premium keeps its time for the partners that make its price
        why += ", defines the tier"
    elif not defining and need > cap:
        cutoff = cap  # slow and rarely winning: less time on the poorer tiers
        why += ", slow and not defining the tier"
    else:
        cutoff = min(need, ceiling_ms)
    cutoff = min(ceiling_ms, max(p.min_cutoff_ms, math.ceil(cutoff / p.quantum_ms - 1e-9) * p.quantum_ms))
    if prev is not None and prev.cutoff_ms > 0 and abs(cutoff - prev.cutoff_ms) <= p.hysteresis * prev.cutoff_ms \
            and prev.cutoff_ms <= ceiling_ms:
        cutoff = prev.cutoff_ms
    return PartnerCutoff(cutoff_ms=round(cutoff, 3), share=share), backoff, why


def defining_partners(windows: dict[str, Window], share: float) -> set[str]:
    """The partners (of one tier's windows) that won ``share`` of its partner value, or, where
    none won anything, of its participating bids."""
    value = sum(w.value_won for w in windows.values())
    part = sum(w.participating for w in windows.values())
    if value > 0:
        return {pid for pid, w in windows.items() if w.value_won / value >= share}
    if part > 0:
        return {pid for pid, w in windows.items() if w.participating / part >= share}
    return set()


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
