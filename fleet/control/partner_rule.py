"""One demand partner's cutoff and share on one tier from its judged window: the rule (issue 21).

``decide`` is the whole rule, a pure function of one window and what was decided before, so it
is tested without control's state (``fleet.control.partner_policy.PartnerBook`` sums the regions'
reports into the windows, keeps the ceilings, backoffs and pins, and calls it):

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
- Cutoffs are rounded up to ``quantum_ms`` and moved only by more than ``hysteresis`` of the last
  one, so a p95's noise leaves the policy, and its epoch, alone.
"""

from __future__ import annotations

import math

import msgspec

from fleet.partners.messages import PartnerCutoff, PartnerTierStats

MAX_LEVEL = 16  # failed trials counted at most (2**16 x backoff_s is far past max_backoff_s)
COUNTERS = ("eligible", "called", "in_time", "late", "errors", "participating", "won")


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
