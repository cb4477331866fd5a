"""What the region and control say to each other about demand partners (the issue-21 contract).

Up: the region's report to control carries ``partners`` = PartnerReport, per partner and tier,
the replica's counts so far (cumulative: control takes the growth since the replica's last
report, so a report sent twice counts once) plus the recent p95 and the cutoff used.
Down: control's cutoff policies carry a PartnerPolicy. It travels inside the per-tier policy
documents control already pushes by epoch (``Push.policy[tier]["partners"][partner_id]``), as
either a bare number (the older format: cutoff ms, share 1) or a PartnerCutoff mapping;
``partner_policy_from_tiers`` reads both into the one shape. A region without control uses the
``regions.yaml`` defaults.
A partner bid that wins: its ``selected`` ledger event carries ``partner``, ``partner_urls``
(PartnerUrls, as the partner sent them, macros unfilled), ``partner_price`` and ``partner_cur``.
"""

from __future__ import annotations

import math

import msgspec


class PartnerTierStats(msgspec.Struct, kw_only=True):
    """One partner on one tier on one replica: its counts so far (cumulative), recent p95, cutoff."""

    eligible: int = 0  # requests of this tier the partner could have seen
    called: int = 0  # requests that reached the wire (after share, throttle, QPS cap, time left)
    in_time: int = 0  # a readable answer (bid or no-bid) before its cutoff
    late: int = 0  # no answer by the cutoff (called = in_time + late + errors)
    errors: int = 0  # connection errors, statuses other than 200/204, unreadable answers
    participating: int = 0  # answered in time with at least one valid bid at or above floor
    won: int = 0  # its bid won our auction
    p95_ms: float | None = None  # recent window of answer latency (late ones count at the cutoff)
    value_won: float = 0.0  # fleet currency, sum of the winning partner prices (cumulative too)
    cutoff_ms: float = 0.0  # the cutoff in force at report time


PartnerReport = dict[str, dict[str, PartnerTierStats]]  # partner id -> tier -> stats


class PartnerCutoff(msgspec.Struct, kw_only=True):
    """Control's word on one partner for one tier."""

    cutoff_ms: float  # 0: do not call
    share: float = 1.0  # fraction of eligible requests to call (the throttle), in [0, 1]
    # (B's proposal) control's share already holds its own tail throttle (a partner late or
    # erroring fleet-wide: ~0.1, with backoff); a region's local tail throttle should combine with
    # it by min, not product: 0.1 x 0.1 leaves too few calls to re-measure the partner.
    pinned: bool = False  # an operator pinned it through the API; control's recompute keeps it


PartnerPolicy = dict[str, dict[str, PartnerCutoff]]  # partner id -> tier -> cutoff


class PartnerUrls(msgspec.Struct, kw_only=True):
    """The partner's own notice URLs for a bid, exactly as sent (macros unfilled)."""

    nurl: str | None = None
    burl: str | None = None
    lurl: str | None = None


def cutoff_from_value(value) -> PartnerCutoff | None:
    """One entry of a tier policy's ``partners`` mapping; None when it is not a valid entry."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ms, share, pinned = float(value), 1.0, False
    elif isinstance(value, dict):
        try:
            c = msgspec.convert(value, PartnerCutoff)
        except (msgspec.ValidationError, TypeError):
            return None
        ms, share, pinned = float(c.cutoff_ms), float(c.share), bool(c.pinned)
    else:
        return None
    if not (math.isfinite(ms) and ms >= 0 and math.isfinite(share) and 0.0 <= share <= 1.0):
        return None
    return PartnerCutoff(cutoff_ms=ms, share=share, pinned=pinned)


def partner_policy_from_tiers(policies: dict[str, dict]) -> PartnerPolicy:
    """The PartnerPolicy inside pushed tier policies (tier -> {"partners": {id: entry}}).
    Invalid entries are skipped (the region keeps its default for them)."""
    out: PartnerPolicy = {}
    for tier, policy in (policies or {}).items():
        partners = policy.get("partners") if isinstance(policy, dict) else None
        if not isinstance(partners, dict):
            continue
        for pid, value in partners.items():
            c = cutoff_from_value(value)
            if c is not None:
                out.setdefault(str(pid), {})[tier] = c
    return out


def partner_policy_to_tiers(policy: PartnerPolicy) -> dict[str, dict[str, dict]]:
    """tier -> {partner id -> PartnerCutoff fields}: what goes under each tier's ``partners``."""
    out: dict[str, dict[str, dict]] = {}
    for pid, tiers in policy.items():
        for tier, c in tiers.items():
            out.setdefault(tier, {})[pid] = msgspec.structs.asdict(c)
    return out
