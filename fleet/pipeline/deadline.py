"""The per-request deadline and its split into stage budgets.

deadline = arrival + min(tmax, region max) - network allowance. Each stage gets its tier's share
of that budget, measured from the moment the stage starts, but never past the deadline itself.
Stages ask ``over(stage)`` at their natural check points and degrade when it says so; the ingress
asks ``expired()`` before answering and sends a no-bid rather than a late bid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fleet.config import TierPolicy

now = time.perf_counter


@dataclass(slots=True)
class Deadline:
    arrival: float
    budget_s: float  # planned server-side time for the whole request
    tier: str = "remnant"
    shares: dict[str, float] = field(default_factory=dict)
    stage_started: float = 0.0
    stage: str = ""
    spent: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)

    @classmethod
    def plan(cls, arrival: float, tmax_ms: int | None, default_tmax_ms: int, max_tmax_ms: int,
             allowance_ms: int) -> "Deadline":
        tmax = default_tmax_ms if not tmax_ms else tmax_ms
        budget_ms = min(tmax, max_tmax_ms) - allowance_ms
        return cls(arrival=arrival, budget_s=max(budget_ms, 0) / 1000.0)

    @property
    def at(self) -> float:
        return self.arrival + self.budget_s

    def set_tier(self, tier: str, policy: TierPolicy) -> None:
        self.tier = tier
        self.shares = policy.budgets

    def start(self, stage: str) -> None:
        t = now()
        if self.stage:
            self.spent[self.stage] = t - self.stage_started
        self.stage, self.stage_started = stage, t

    def finish(self) -> None:
        if self.stage:
            self.spent[self.stage] = now() - self.stage_started
            self.stage = ""

    def stage_deadline(self, stage: str | None = None) -> float:
        share = self.shares.get(stage or self.stage, 0.0)
        return min(self.stage_started + share * self.budget_s, self.at)

    def over(self, stage: str | None = None) -> bool:
        return now() > self.stage_deadline(stage)

    def expired(self) -> bool:
        return now() >= self.at

    def degrade(self, what: str) -> None:
        self.degraded.append(what)
