"""A replica under control: report and renew every interval, apply what comes back.

Every control interval the replica reports spend, reservations, opportunities, heartbeat
figures, stage latencies and per-version model outcomes, and applies the push that answers it
(leases, cutoff policy, model assignment); a policy or model change also arrives between syncs
by long-poll (``watch``). Control out of reach costs nothing on the request path: the replica
keeps its last policy, and its leases run out. ``link`` is either transport of
``fleet.control.link`` (the control actor's handle, or HTTP), or a fake in tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fleet.config import ControlSettings, TierPolicy
from fleet.control.messages import Push, Report
from fleet.obs.histogram import delta, quantile
from fleet.region.models import ModelSlots, VersionOutcomes

log = logging.getLogger("ray.serve")


class ControlSync:
    def __init__(self, region: str, replica: str, bidder, link, settings: ControlSettings,
                 models: ModelSlots, versions: VersionOutcomes, wins: Callable[[], int], partners=None):
        self.region = region
        self.replica = replica
        self.bidder = bidder  # its budget is a fleet.pipeline.pacing.LeaseBudget
        self.link = link
        self.settings = settings
        self.models = models
        self.versions = versions
        self.wins = wins  # win notices counted so far
        self.partners = partners  # stage 6 (fleet.pipeline.fanout.Partners), or None
        self.epoch = 0
        self.seq = 0  # reports sent: control applies each one once, in order
        self.policy_epoch = -1
        self.state = {"syncs": 0, "failures": 0, "last_ok": None, "last_error": ""}
        self._beat_prev: dict[str, float] = {}
        self._lat_prev: dict[str, list[int]] = {}

    def report(self) -> Report:
        b, st = self.bidder.budget, self.bidder.stats
        now = self.bidder.clock()
        b.expire(now)
        figs = {"requests": st["requests"], "answered": st["answered_bid"] + st["nobid"],
                "errors": st["errors"], "late": st["late_suppressed"], "bids": st["answered_bid"],
                "degraded": st["degraded"], "wins": self.wins()}
        beat = {k: v - self._beat_prev.get(k, 0) for k, v in figs.items()}
        beat["interval_s"] = self.settings.interval_s
        self._beat_prev = figs
        snap = self.bidder.latency.snapshot()
        p99 = {}
        for stage, counts in delta(snap, self._lat_prev).items():
            q = quantile(counts, 0.99)
            if q is None:
                continue
            if stage == "total":
                beat["p99_ms"] = round(q * 1000.0, 4)
                beat["p50_ms"] = round(quantile(counts, 0.5) * 1000.0, 4)
            else:
                p99[stage] = round(q * 1000.0, 4)
        self._lat_prev = snap
        self.seq += 1
        return Report(region=self.region, replica=self.replica, ts=now, epoch=self.epoch, seq=self.seq,
                      spend=b.mark_report(), reserved={k: v for k, v in b.reserved.items() if v > 0},
                      opportunities=dict(b.opportunities), blocked=dict(b.blocked), throttled=dict(b.throttled),
                      units=dict(b.units), held=b.held(), heartbeat=beat,
                      stage_p99_ms=p99, versions=self.versions.take(), model=self.models.declared,
                      candidate=self.models.declared_candidate,
                      partners=self.partners.report() if self.partners is not None else {})

    async def sync_loop(self) -> None:
        """Report and renew every interval; a failed sync leaves leases to run out."""
        while True:
            try:
                push = await self.link.sync(self.report())
                await self.apply(push)
                self.state["syncs"] += 1
                self.state["last_ok"] = self.bidder.clock()
            except Exception as exc:
                self.state["failures"] += 1
                self.state["last_error"] = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.settings.interval_s)

    async def watch_loop(self) -> None:
        """Policy and model pushes between syncs (long-poll)."""
        while True:
            try:
                await self.apply(await self.link.watch(self.epoch, 10.0), leases=False)
            except Exception:
                await asyncio.sleep(self.settings.interval_s)

    async def apply(self, push: Push, leases: bool = True) -> None:
        if push.epoch < self.epoch:
            return  # an answer from before a newer push: ignore it
        self.epoch = push.epoch
        if leases:
            self.bidder.budget.apply(push.leases, push.epoch)
        if push.policy_epoch != self.policy_epoch and push.policy:
            tiers = dict(self.bidder.tiers)
            for tier, pol in push.policy.items():
                try:
                    tiers[tier] = TierPolicy(min_floor_usd=pol.get("min_floor_usd", 0.0),
                                             deals=pol.get("deals", False), budgets=pol["budgets"])
                except Exception as exc:
                    log.error("policy for tier %s refused: %s", tier, exc)
            self.bidder.tiers = tiers
            if self.partners is not None:  # partner cutoffs and shares ride in the same documents
                self.partners.apply_policy(push.policy)
            self.policy_epoch = push.policy_epoch
        if push.model is not None and push.model != self.models.assigned:
            await self.models.assign(push.model)

    def summary(self) -> dict:
        b = self.bidder.budget
        return {**self.state, "epoch": self.epoch, "policy_epoch": self.policy_epoch, "model": self.models.summary(),
                "leases": len(b.leases), "reserved": round(sum(b.reserved.values()), 6),
                "spend": round(sum(b.spend.values()), 6), "holds": len(b.holds),
                "blocked": sum(b.blocked.values()), "throttled": sum(b.throttled.values()),
                "opportunities": sum(b.opportunities.values())}
