"""Per-tier cutoff policies, recomputed by the control actor from reported stage latencies.

A tier's policy is a plain dict in the shape of ``regions.yaml`` ``tiers:`` (see
``fleet.config.TierPolicy``): ``budgets`` maps each stage to its share of the request's budget;
``partners`` (optional) maps a demand partner's id to its cutoff: a bare number of milliseconds (a
ceiling, the older format) or ``fleet.partners.messages.PartnerCutoff`` fields (``cutoff_ms``,
``share``, ``pinned``), which control computes in ``fleet.control.partner_policy`` and overlays on
the stage budgets recomputed here. Other keys (``min_floor_usd``, ``deals``) are carried through
untouched.

Regions apply a policy by its ``epoch``: the epoch moves only when a policy really changes, so
regions re-apply nothing on a recompute that changed nothing.
"""

from __future__ import annotations

import copy
import math

from fleet.config import STAGES
from fleet.partners.messages import cutoff_from_value


def recompute(base: dict[str, dict], stage_p99_ms: dict[str, float], typical_budget_ms: dict[str, float],
              *, margin: float = 1.5, floor_share: float = 0.02, elastic: str = "pricing",
              quantum: float = 0.01, cut: set[str] | frozenset = frozenset(),
              hold: set[str] | frozenset = frozenset(),
              optional: tuple[str, ...] = ("enrichment",)) -> dict[str, dict]:
    """New policies from ``base``: stages whose observed p99 * margin needs more than their base
    share get it, taken from the ``elastic`` stage; ``base`` is not mutated.

    - Shares only grow from the base, never shrink: a p99 is one window's tail, and cutting a
      stage to it turns the next spike into degraded answers (defaults, rule prices) or no-bids.
      Recomputing from the base each time also means a stage gets its share back when it recovers.
    - The elastic stage (pricing) pays, down to half its base share and no lower; what it cannot
      pay is not given. Earlier stages are served first: a late early stage starves all after it.
      The elastic stage's own overrun is not fed: it has its own degradation (the rule price).
    - The total stays the base total (shares move; none are created).
    - Needs are rounded up to ``quantum`` so small moves of a p99 leave the policy, and the epoch,
      unchanged. A share never goes below ``floor_share`` (within what the elastic stage can pay).
    - Tiers missing from ``typical_budget_ms`` and stages without a p99 keep their base shares.
    - Tiers in ``cut`` (their demand partners were late together: ``partner_policy``) have their
      ``optional`` stages cut to ``floor_share`` and not fed: enrichment answers from the
      near-cache or a lookup that is quick, else degrades to the request's own data, and the
      fan-out gets the time. What is cut is given to no other stage (the partners' time is what
      is left before the deadline).
    - Tiers in ``hold`` (they have demand partners) never feed their ``optional`` stages: the
      fan-out starts when enrichment ends, so a share given to a slower enrichment is time taken
      from the partners (seed 001, failure chain 1), while pricing, which pays, runs beside them.
      A slow lookup degrades instead (the request's own data, bid x0.9).
    - Partner entries are carried through untouched: their cutoffs and shares are
      ``fleet.control.partner_policy``'s (one definition), overlaid after this.
    """
    out: dict[str, dict] = {}
    for tier, policy in base.items():
        new = copy.deepcopy(policy)
        out[tier] = new
        budget_ms = typical_budget_ms.get(tier)
        shares: dict[str, float] = new.get("budgets", {})
        if budget_ms and budget_ms > 0 and elastic in shares:
            spare = shares[elastic] - shares[elastic] / 2.0  # what the elastic stage may give
            if tier in cut:
                for stage in [s for s in optional if s in shares and s != elastic]:
                    shares[stage] = min(floor_share, shares[stage])
            held = tier in cut or tier in hold
            for stage in [s for s in STAGES if s in shares and s != elastic and not (held and s in optional)]:
                p99 = stage_p99_ms.get(stage)
                if p99 is None:
                    continue
                need = math.ceil(p99 * margin / budget_ms / quantum - 1e-9) * quantum
                need = min(max(need, floor_share), 1.0)
                give = math.floor(min(need - shares[stage], spare) * 1e6 + 1e-6) / 1e6  # float noise
                if give > 0:
                    shares[stage] += give
                    shares[elastic] -= give
                    spare -= give
            for stage in shares:
                shares[stage] = round(shares[stage], 6)
    return out


def validate_tier(tier: str, policy: dict) -> None:
    """Raise ValueError naming what is wrong with one tier's policy."""
    budgets = policy.get("budgets") if isinstance(policy, dict) else None
    if not isinstance(budgets, dict) or not budgets:
        raise ValueError(f"tier {tier!r}: 'budgets' must be a non-empty mapping of stage -> share")
    unknown = sorted(set(budgets) - set(STAGES))
    if unknown:
        raise ValueError(f"tier {tier!r}: unknown stages {unknown}; known: {list(STAGES)}")
    for stage, share in budgets.items():
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share <= 1:
            raise ValueError(f"tier {tier!r}: share of {stage!r} must be in (0, 1], got {share!r}")
    total = sum(budgets.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"tier {tier!r}: stage shares sum to {total:.6g}, more than 1")
    partners = policy.get("partners", {})
    if not isinstance(partners, dict):
        raise ValueError(f"tier {tier!r}: 'partners' must be a mapping of partner id -> cutoff")
    for pid, v in partners.items():
        c = cutoff_from_value(v)
        if c is None or (not isinstance(v, dict) and not c.cutoff_ms > 0):
            raise ValueError(f"tier {tier!r}: cutoff of partner {pid!r} must be > 0 ms or "
                             f"{{cutoff_ms >= 0, share in [0, 1], pinned}}, got {v!r}")


class PolicyBook:
    """The policies in force for every tier, and an epoch that moves only when they change."""

    def __init__(self, policies: dict[str, dict] | None = None, epoch: int = 0) -> None:
        for tier, policy in (policies or {}).items():
            validate_tier(tier, policy)
        self.policies: dict[str, dict] = copy.deepcopy(policies or {})
        self.epoch = epoch

    def update(self, new: dict[str, dict]) -> bool:
        """Replace the whole set (tiers absent from ``new`` are dropped); True if anything changed."""
        for tier, policy in new.items():
            validate_tier(tier, policy)
        if new == self.policies:
            return False
        self.policies = copy.deepcopy(new)
        self.epoch += 1
        return True

    def set_tier(self, tier: str, policy: dict) -> int:
        """Operator override of one tier; the epoch after it."""
        validate_tier(tier, policy)
        if self.policies.get(tier) != policy:
            self.policies[tier] = copy.deepcopy(policy)
            self.epoch += 1
        return self.epoch

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "policies": copy.deepcopy(self.policies)}

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyBook":
        return cls(d.get("policies", {}), int(d.get("epoch", 0)))
