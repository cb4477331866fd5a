"""The control actor's logic, without Ray: campaigns and pacing, rollouts, policies, health.

``Control`` is what the detached ``control`` actor runs (``fleet.serve.control_actor``) and what
tests drive directly. Its whole state is one JSON document in Redis (``fleet:control:state``),
written before a sync is answered, so a restarted control resumes with every reported cent and
every lease it handed out; the epoch moves on at each start, so regions can tell a new
incarnation's pushes from a stale answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import msgspec

from fleet.control import dashboard_view, failover
from fleet.control.cutoffs import PolicyBook, recompute, validate_tier
from fleet.control.flight import daily_flight, flight_from_body
from fleet.control.health import HealthBook
from fleet.control.idempotency import Idempotency
from fleet.control.ledger_view import LedgerView
from fleet.control.messages import ModelAssignment, Push, Report
from fleet.control.pace_view import pace_view
from fleet.control.pacer import Pacer
from fleet.control.partner_policy import PartnerBook
from fleet.control.rollout import Rollout, Thresholds, VersionStats
from fleet.control.standin import StandIn, no_new_room

log = logging.getLogger("fleet.control")
STATE_KEY = "fleet:control:state"


class Control:
    def __init__(self, config, redis=None, clock=time.time, catalog=None):
        s = config.defaults.control
        self.config = config
        self.settings = s
        self.redis = redis  # redis.asyncio client, or None (state in memory only)
        self.clock = clock
        self.pacer = Pacer(s.pacing(), {n: r.budget_share for n, r in config.regions.items()}, clock)
        self.health = HealthBook(stale_s=s.health_stale_s)
        self.health.expect(list(config.regions))
        self.base_policies = {t: p.model_dump() for t, p in config.tiers.items()}
        self.policies = PolicyBook(self.base_policies)
        self.partners = PartnerBook()  # demand partners' cutoffs and shares (issue 21)
        self.thresholds = Thresholds.from_dict(s.rollout) if s.rollout else Thresholds()
        self.rollouts: dict[str, Rollout] = {}
        self.current: str | None = None  # the model version control has settled on (None: the regions')
        # region -> the model its serve_config declared when ``current`` was promoted over it;
        # a region leaves once its live replicas all declare something else (see ModelAssignment)
        self.over: dict[str, str | None] | None = None
        # region -> replica -> [declared model, last reported, reported since (that model)]
        self.declared: dict[str, dict[str, list]] = {}
        self.reported_model: str | None = None  # what serve_config.yaml names, as replicas report it
        self.decided: set[str] = set()  # candidates already promoted or rolled back
        self.epoch = 0
        self.stage_p99: dict[str, float] = {}
        self.latency: dict[str, dict] = {}
        self.ledger = LedgerView(config.regions, self.pacer)  # finalized spend into the books
        self.history: dict[str, list] = {}  # campaign -> [(t, spent, planned)], for the dashboard
        self.last_policy = clock()
        self.catalog = catalog or []
        self.redis_up = True
        self.saves = 0
        self._lock = asyncio.Lock()
        self.quiet_until = 0.0  # after a restart: no new room until the last incarnation's leases ran out
        self.standin = StandIn(s.standin_share)  # what may be granted while saves fail (fleet.control.standin)
        # The saved state has been read (or there is none to read): until then control grants no
        # new room and writes nothing, so a start with Redis away never saves an empty state over
        # the real one (``fleet.serve.control_actor`` retries ``start``).
        self.loaded = redis is None
        self.idem = Idempotency()
        self._changed = asyncio.Event()
        self._refused: tuple | None = None  # the last candidate not canaried, and why (logged once)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the persisted state (if any), move the epoch on, seed daily flights."""
        if self.redis is not None:
            raw = await self.redis.get(STATE_KEY)
            if raw:
                doc = json.loads(raw)
                self.load(doc)
                self.quiet_until = self.clock() + self.settings.lease_ttl_s
                StandIn.restore(self.pacer, doc.get("standin", {}), self.clock(), self.quiet_until)
                self.pacer.roll_days(self.clock())  # saved before midnight: today's books, not yesterday's
            self.loaded = True
        # Past the saved epoch and past any an earlier incarnation reached without saving (it
        # moves by one per change, far slower than the clock's milliseconds): replicas drop a
        # push older than what they applied.
        self.epoch = max(self.epoch + 1, int(self.clock() * 1000))
        if self.settings.seed_catalog:
            now = self.clock()
            for c in self.catalog:  # today's flight from now: the rest of the day's budget and curve
                if c.id not in self.pacer.campaigns:
                    self.pacer.put_flight(daily_flight(c.id, c.budget_daily, now))
        await self.save()

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "pacer": self.pacer.to_dict(), "health": self.health.to_dict(),
                "policies": self.policies.to_dict(), "base_policies": self.base_policies,
                "rollouts": {k: r.to_dict() for k, r in self.rollouts.items()},
                "current": self.current, "over": self.over, "declared": self.declared,
                "decided": sorted(self.decided),
                "thresholds": self.thresholds.to_dict(), "partners": self.partners.to_dict()}

    def load(self, doc: dict) -> None:
        self.epoch = doc.get("epoch", 0)
        self.pacer.load(doc.get("pacer", {}))
        if "health" in doc:
            self.health = HealthBook.from_dict(doc["health"])
            self.health.expect(list(self.config.regions))
        if "policies" in doc:
            self.policies = PolicyBook.from_dict(doc["policies"])
        self.base_policies = doc.get("base_policies", self.base_policies)
        self.rollouts = {k: Rollout.from_dict(r) for k, r in doc.get("rollouts", {}).items()}
        self.current = doc.get("current")
        self.over = doc.get("over")
        if self.current and "over" not in doc:  # saved before ``over``: the promotion's baseline
            ro = next((r for r in self.rollouts.values() if r.state == "promoted" and r.version == self.current), None)
            if ro is not None:
                self.over = {region: ro.baseline for region in self.config.regions}
        self.declared = {region: {rid: e if len(e) == 3 else [e[0], e[1], e[1]] for rid, e in reps.items()}
                         for region, reps in doc.get("declared", {}).items()}
        self.decided = set(doc.get("decided", []))
        if "thresholds" in doc:
            self.thresholds = Thresholds.from_dict(doc["thresholds"])
        if "partners" in doc:
            self.partners = PartnerBook.from_dict(doc["partners"])

    async def save(self) -> bool:
        """Write the state; in order (one writer at a time). False when Redis is out of reach:
        control goes on in memory and says so (``redis_up`` in /v1/state and /v1/dashboard)."""
        if self.redis is None or not self.loaded:
            return False
        async with self._lock:
            doc = self.to_dict()
            now = self.clock()
            saved = self.standin.take(self.pacer, now, quiet=now < self.quiet_until)  # the counts of this doc
            doc["standin"] = saved.doc()
            raw = json.dumps(doc, separators=(",", ":"))
            try:
                await self.redis.set(STATE_KEY, raw)
            except Exception as exc:
                if self.redis_up:
                    log.error("control state not persisted (Redis): %s", exc)
                self.redis_up = False
                return False
            self.standin.adopt(saved)
            self.redis_up = True
            self.saves += 1
            return True

    def _bump(self) -> None:
        self.epoch += 1
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the regions' side -----------------------------------------------------------------

    def assignment(self) -> ModelAssignment:
        active = next((r for r in self.rollouts.values() if r.active), None)
        if active is not None:
            return ModelAssignment(current=active.baseline, candidate=active.version, share=active.share,
                                   rollout=active.id)
        return ModelAssignment(current=self.current, over=None if self.over is None else dict(self.over))

    def _declare(self, r: Report, now: float) -> None:
        """Note what the replica's serve_config names; a region whose live replicas all name
        another version than the one a promotion superseded has been deployed since: control's
        version no longer stands over it (and once over no region, ``current`` is cleared)."""
        reps = self.declared.setdefault(r.region, {})
        prev = reps.get(r.replica)
        reps[r.replica] = [r.model, now, prev[2] if prev is not None and prev[0] == r.model else now]
        # Replicas long gone are forgotten, but a silent region keeps its last word.
        for rid in [k for k, (_, t, _) in reps.items() if now - t > 10 * self.health.stale_s]:
            del reps[rid]
        if self.over is None or r.region not in self.over:
            return
        live = {e[0] for e in self._live(reps.values(), now)}
        if self.over[r.region] in live:
            return
        log.info("region %s now declares %s: promoted %s no longer stands over it", r.region,
                 sorted(live, key=str), self.current)
        del self.over[r.region]
        if not self.over:
            self.current, self.over = None, None
        self._bump()

    def _superseded(self, region: str, now: float, baseline: str | None) -> str | None:
        """What ``region`` declared before whatever deploy may be under way: among its live
        replicas (else its last known ones) the declaration held the longest; the baseline for a
        region never heard from."""
        entries = list(self.declared.get(region, {}).values())
        pool = self._live(entries, now) or entries
        return min(pool, key=lambda e: e[2])[0] if pool else baseline

    def _pricing_split(self, now: float) -> set:
        """The versions the regions price with now (more than one: a deploy released some)."""
        a = self.assignment()
        return {a.version_for(region, e[0]) for region, reps in self.declared.items()
                for e in self._live(reps.values(), now)}

    def _live(self, entries, now: float) -> list:
        """The declarations (``declared`` entries) of replicas that reported within ``stale_s``."""
        return [e for e in entries if now - e[1] <= self.health.stale_s]

    def push(self, leases=None) -> Push:
        return Push(epoch=self.epoch, ts=self.clock(), leases=leases or {}, policy=self.policies.policies,
                    policy_epoch=self.policies.epoch, model=self.assignment())

    async def sync(self, r: Report) -> Push:
        """A replica's report in, its leases and the current policy out (state saved first)."""
        if not self.pacer.fresh(r):  # overtaken by a later report of the same replica: changes nothing
            return self.push({})
        now = self.clock()
        self.reported_model = r.model or self.reported_model
        self._declare(r, now)
        self.pacer.roll_days(now)  # a report after midnight counts for the new day's book, never the ended one
        self.pacer.absorb(r, now)
        hb = dict(r.heartbeat)
        self.health.beat(r.region, r.replica, now, hb)
        if "p99_ms" in hb:  # the latest latency figures per region, for the dashboard
            self.latency[r.region] = {"p50_ms": hb.get("p50_ms"), "p99_ms": hb["p99_ms"], "t": now}
        for stage, ms in r.stage_p99_ms.items():
            self.stage_p99[stage] = max(self.stage_p99.get(stage, 0.0), ms)
        self.partners.absorb(r.region, r.replica, r.partners, now)
        for version, figs in r.versions.items():
            stats = VersionStats.from_dict(figs)
            for ro in self.rollouts.values():
                ro.observe(version, stats)
        pricing = self.assignment().version_for(r.region, r.model) if r.candidate else None
        if r.candidate and r.candidate not in self.decided and r.candidate != pricing:
            if not any(ro.version == r.candidate or ro.active for ro in self.rollouts.values()):
                split = self._pricing_split(now)
                if not pricing or len(split) > 1:
                    # A canary's baseline prices in every region: with none, or regions on
                    # different versions, there is nothing one comparison could stand for.
                    why = (r.candidate, tuple(sorted(split, key=str)))
                    if self._refused != why:
                        self._refused = why
                        log.warning("candidate %s not canaried: regions price %s (start it with "
                                    "POST /control/v1/rollouts and a baseline)", r.candidate, list(why[1]))
                else:
                    self.start_rollout(r.candidate, pricing, now)
        leases = self.pacer.grant(r, now)
        if now < self.quiet_until or not self.loaded:
            # Just restarted, or the saved state not read yet: the last incarnation may have
            # granted leases it could not save (Redis away), live for up to lease_ttl_s. No new
            # room until they have run out; reservations and saved leases' rest stay covered.
            leases = no_new_room(self.pacer, r, leases)
        if not await self.save() and self.redis is not None:
            leases = self.standin.cut(self.pacer, r, leases)  # pushed unsaved: within the allowance
        return self.push(leases)

    async def watch(self, epoch: int, wait_s: float) -> Push:
        """Long-poll: answers as soon as the epoch passes ``epoch``, or after ``wait_s``."""
        if self.epoch <= epoch:
            try:
                await asyncio.wait_for(self._changed.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
        return self.push()

    # -- the control interval ---------------------------------------------------------------

    @property
    def drift(self) -> dict[str, dict]:
        """Region -> the replicas' reported spend for today's daily flights against the ledger's."""
        return self.ledger.drift

    async def tick(self, dt: float) -> None:
        now = self.clock()
        await self.ledger.refresh(self.redis, now)  # the books converge on the ledger's spend
        self.pacer.set_heirs(failover.heirs(self.health.view(now), self.config.latency_ms))  # budget follows traffic
        self.pacer.tick(now, dt)
        dashboard_view.sample(self, now)
        changed = False
        for ro in self.rollouts.values():
            action = ro.evaluate(now)
            if action is None:
                continue
            log.info("rollout %s (%s): %s at share %.2f", ro.id, ro.version, action, ro.share)
            if action == "promote":
                self.current = ro.version
                # over what each region declared before any deploy under way (see _superseded)
                self.over = {region: self._superseded(region, now, ro.baseline) for region in self.config.regions}
            if action in ("promote", "rollback"):
                self.decided.add(ro.version)
            changed = True
        if now - self.last_policy >= self.settings.policy_every_s and (self.stage_p99 or self.partners.pending()):
            typical = self._typical_budget_ms()
            self.partners.recompute(list(self.base_policies), now, self.base_policies)
            stages = (recompute(self.base_policies, self.stage_p99, typical, cut=self.partners.cut_tiers(now),
                                hold=self.partners.tiers()) if self.stage_p99 else self.policies.policies)
            if self.policies.update(self.partners.overlay(stages)):
                log.info("cutoff policies recomputed from p99 %s: epoch %d", self.stage_p99, self.policies.epoch)
                changed = True
            self.stage_p99, self.last_policy = {}, now
        if changed:
            self._bump()
        await self.save()

    def dashboard(self) -> dict:
        """Everything the dashboard shows, in one document (``fleet.control.dashboard_view``)."""
        return dashboard_view.document(self)

    def _typical_budget_ms(self) -> dict[str, float]:
        """The tightest server-side budget a region plans with (its max tmax less the way back)."""
        ms = min(r.max_tmax_ms - r.network_allowance_ms for r in self.config.regions.values())
        return {t: float(ms) for t in self.base_policies}

    # -- operator API -----------------------------------------------------------------------

    def put_campaign(self, cid: str, body: dict) -> dict:
        """Create or change a campaign's flight (``fleet.control.flight.flight_from_body``)."""
        cp = self.pacer.campaigns.get(cid)
        self.pacer.put_flight(flight_from_body(cid, body, cp.flight if cp is not None else None, self.clock()))
        return self.campaign_view(cid)

    def campaign_view(self, cid: str) -> dict:
        return pace_view(self.pacer, self.clock())[cid]

    def set_policy(self, tier: str, policy: dict) -> dict:
        validate_tier(tier, policy)
        self.base_policies[tier] = policy  # a recompute starts from the operator's policy
        before = self.policies.epoch
        self.policies.set_tier(tier, self.partners.overlay({tier: policy})[tier])  # partner entries stay
        if self.policies.epoch != before:
            self._bump()
        return {"tier": tier, "policy": self.policies.policies[tier], "policy_epoch": self.policies.epoch}

    def pin_partner(self, pid: str, tier: str, body: dict | None) -> dict:
        """Pin (``body``: cutoff_ms, share) or unpin (None) a partner on a tier; pushed by epoch."""
        if tier not in self.policies.policies:
            raise KeyError(tier)
        entry = self.partners.pin(pid, tier, body) if body is not None else self.partners.unpin(pid, tier)
        if self.policies.update(self.partners.overlay(self.policies.policies)):
            self._bump()
        return {"partner": pid, "tier": tier, "entry": msgspec.to_builtins(entry), "policy_epoch": self.policies.epoch}

    def start_rollout(self, version: str, baseline: str | None, now: float | None = None) -> Rollout:
        now = self.clock() if now is None else now
        if any(r.active for r in self.rollouts.values()):
            raise ValueError("a rollout is already in progress")
        if not baseline:
            raise ValueError("no current version to compare against")
        rid = f"r{len(self.rollouts) + 1}"
        ro = self.rollouts[rid] = Rollout.begin(rid, version, baseline, now, self.thresholds)
        self.decided.discard(version)
        self._bump()
        return ro

    def set_thresholds(self, changes: dict) -> dict:
        """Canary thresholds for rollouts started from now on (fields of ``Thresholds``)."""
        unknown = set(changes) - set(self.thresholds.to_dict())
        if unknown:
            raise ValueError(f"unknown threshold fields: {sorted(unknown)}")
        self.thresholds = Thresholds.from_dict({**self.thresholds.to_dict(), **changes})
        return self.thresholds.to_dict()

    def abort_rollout(self, rid: str, reason: str) -> Rollout:
        ro = self.rollouts[rid]
        if ro.active:
            ro.abort(self.clock(), reason)
            self.decided.add(ro.version)
            self._bump()
        return ro

    def state_view(self) -> dict:
        now = self.clock()
        return {"epoch": self.epoch, "policy_epoch": self.policies.epoch, "model": msgspec.to_builtins(self.assignment()),
                "redis_up": self.redis_up, "ledger_read": self.ledger.up, "campaigns": len(self.pacer.campaigns),
                "leases": len(self.pacer.leases), "health": self.health.view(now), "failover": dict(self.pacer.heirs)}

    # -- idempotent writes ------------------------------------------------------------------

    async def idempotent(self, key: str | None, fingerprint: str, fn):
        """Run the write ``fn`` once per idempotency key (``fleet.control.idempotency``): a retry
        with the same key and request gets the first answer; another request under it, a 422."""
        return await self.idem.run(self.redis, key, fingerprint, fn,
                                   persist=self.save if self.redis is not None else None)
