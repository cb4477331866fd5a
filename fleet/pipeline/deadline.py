"""The per-request deadline and its split into stage budgets.

deadline = arrival + min(tmax, region max) - network allowance. ``arrival`` is when the request
reached the fleet: the ingress (HAProxy) stamps its accept time in ``x-fleet-arrival`` (epoch
microseconds, ``fleet.runtime.haproxy_shim``), so the time a request waited in HAProxy's queue
and in the replica before the handler ran counts against its deadline, and is recorded as a stage
of its own (``queue``). Without a plausible stamp, the handler's first clock reading stands in.
Each stage gets its tier's share of that budget, measured from the moment the stage starts, but
never past the deadline itself. Stages ask ``over(stage)`` at their natural check points and
degrade when it says so; the ingress asks ``expired()`` before answering and sends a no-bid rather
than a late bid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fleet.config import TierPolicy

now = time.perf_counter

ARRIVAL_HEADER = "x-fleet-arrival"  # epoch microseconds, set by the ingress (never the client's)
# A stamp up to this far ahead of the replica's clock is another host's clock skew: no queue time.
# Further ahead, or older than MAX_QUEUE_S (no request waits that long: HAProxy's own timeouts are
# shorter), it is not a stamp to plan by, and the handler's reading is used instead.
MAX_SKEW_S = 0.05
MAX_QUEUE_S = 30.0


def fleet_arrival(stamp: str | None, handler: float, wall_offset: float | None = None) -> tuple[float, float, str]:
    """(arrival on the ``now()`` clock, seconds queued before ``handler``, where it came from:
    ``ingress`` | ``handler`` | ``implausible``). ``stamp``: the ``x-fleet-arrival`` header;
    ``handler``: the handler's first ``now()`` reading; ``wall_offset``: ``time.time() - now()``
    (read once by the caller; measured here when None)."""
    if not stamp:
        return handler, 0.0, "handler"
    try:
        at = int(stamp) / 1e6
    except ValueError:
        return handler, 0.0, "implausible"
    offset = time.time() - now() if wall_offset is None else wall_offset
    queued = handler - (at - offset)
    if queued < -MAX_SKEW_S or queued > MAX_QUEUE_S:
        return handler, 0.0, "implausible"
    queued = max(queued, 0.0)
    return handler - queued, queued, "ingress"


def longest_budget_s(max_tmax_ms: int, allowance_ms: int) -> float:
    """The most server-side time any request can have in a region (before its tmax is read)."""
    return max(max_tmax_ms - allowance_ms, 0) / 1000.0


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
