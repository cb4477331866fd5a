"""What regions and control say to each other: one report up, one push down, per sync.

Money figures in a report are cumulative for the replica's lifetime (its id changes when it
restarts), so a retried or duplicated report never counts spend twice: control takes the
difference from the last total it saw. Statistics that only steer (heartbeats, latency, model
versions) travel as deltas since the last acknowledged sync.
"""

from __future__ import annotations

import msgspec

from fleet.partners.messages import PartnerTierStats


class Report(msgspec.Struct, kw_only=True):
    region: str
    replica: str
    ts: float
    epoch: int = 0  # the last push epoch the replica applied
    seq: int = 0  # the replica's report counter (0: one that does not count): a late report changes nothing
    spend: dict[str, float] = {}  # campaign -> billed spend, fleet currency, cumulative
    reserved: dict[str, float] = {}  # campaign -> tentative spend held now (bids awaiting notices)
    opportunities: dict[str, int] = {}  # campaign -> eligible candidates seen, cumulative
    blocked: dict[str, int] = {}  # campaign -> candidates refused for want of lease, cumulative
    throttled: dict[str, int] = {}  # campaign -> candidates the throttle left out, cumulative
    units: dict[str, float] = {}  # campaign -> the largest single reservation it asks for (max bid)
    # campaign -> id of the lease the replica holds (None: a replica that does not say): control
    # counts a lease it replaced until the replica confirms the replacement (a lost reply)
    held: dict[str, str] | None = None
    heartbeat: dict[str, float] = {}  # requests, answered, errors, late, bids (deltas), interval_s
    stage_p99_ms: dict[str, float] = {}  # per stage, over the interval
    versions: dict[str, dict] = {}  # model version -> VersionStats fields (deltas)
    model: str | None = None  # what serve_config.yaml names for this replica
    candidate: str | None = None  # a candidate named in serve_config.yaml, if any
    partners: dict[str, dict[str, PartnerTierStats]] = {}  # partner -> tier -> stats, cumulative (issue 21)


class Lease(msgspec.Struct, kw_only=True):
    """Budget tokens for one campaign on one replica: the most it may newly commit (reserve or
    spend) from the report that asked for it until ``expires_at``; nothing after."""

    id: str
    campaign: str
    amount: float
    expires_at: float
    throttle: float = 1.0  # probability of taking part in an eligible auction


class ModelAssignment(msgspec.Struct, kw_only=True):
    """Which version prices. ``serve_config.yaml``'s ``model`` is the declared version; control
    settles ``current`` over it during a canary (the baseline) and after a promotion. A promotion
    stands only over the declarations it superseded (``over``: region -> the model it declared
    then), so a later ``serve deploy`` of another version is a newer decision and takes effect,
    in place, as it would without control. ``over`` None: ``current`` holds for every region (a
    canary's baseline; a promotion from before ``over`` existed)."""

    current: str | None = None
    candidate: str | None = None
    share: float = 0.0  # of priced requests that go to the candidate
    rollout: str | None = None
    over: dict[str, str | None] | None = None

    def version_for(self, region: str, declared: str | None) -> str | None:
        """The version a replica of ``region`` whose serve_config declares ``declared`` prices with."""
        if not self.current:
            return declared
        if self.over is None or (region in self.over and self.over[region] == declared):
            return self.current
        return declared


class Push(msgspec.Struct, kw_only=True):
    epoch: int  # control's state epoch; a replica ignores a push older than what it applied
    ts: float
    leases: dict[str, Lease] = {}
    policy: dict[str, dict] = {}  # tier -> {"budgets": {stage: share}, "partners": {id: ms | PartnerCutoff fields}}
    policy_epoch: int = 0
    model: ModelAssignment | None = None


def encode(obj) -> bytes:
    return msgspec.json.encode(obj)


def decode_report(raw: bytes) -> Report:
    return msgspec.json.decode(raw, type=Report)


def decode_push(raw: bytes) -> Push:
    return msgspec.json.decode(raw, type=Push)
