"""The region's Serve application: one ingress deployment wrapping ``RegionBidder``.

Thin on purpose: route the path, read the body under the size cap, call the plain-Python bidder
and turn its ``Answer`` into a response. Routes under the region's prefix:
``POST /openrtb2/bid``, ``GET /notice/{win|bill|loss|click}``, ``GET /ready``, ``GET /stats``,
``GET /cache`` (every shard's own figures).

With control on, the replica spends under control's leases: every control interval it reports
spend, reservations, opportunities, heartbeat figures, stage latencies and per-version model
outcomes, and applies what comes back (leases, cutoff policy, model assignment); a policy or
model change also arrives by long-poll. Control out of reach costs nothing on the request path:
the replica keeps its last policy, and its leases run out.

Enrichment is the one stage that awaits here: the user's profile comes from the region's cache
shards (``fleet.cache.client``) within the stage's budget, or defaults stand in for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import msgspec
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import numpy as np

from fleet.campaigns.catalog import load_catalog
from fleet.config import RegionAppArgs, load_regions
from fleet.ml.features import N_FEATURES
from fleet.cache.client import CacheClient
from fleet.config import resolve
from fleet.ledger.emitter import EventEmitter
from fleet.ledger.events import notice_event
from fleet.ledger.signing import NoticeSigner
from fleet.obs.histogram import StageHistograms, watch_gc, watch_loop_lag
from fleet.pipeline.bidder import Answer, RegionBidder
from fleet.pipeline.deadline import now
from fleet.pipeline.notices import NoticeCounter, NoticeSettlement
from fleet.runtime.placement import region_resources
from fleet.serve.microbatch import MicroBatcher

_json = msgspec.json.Encoder()
log = logging.getLogger("ray.serve")


def _json_response(status: int, obj) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json")


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (stops reading as soon as it is)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class RegionIngress:
    def __init__(self, args: dict, inference=None):
        a = RegionAppArgs.model_validate(args)
        self.inference = inference  # DeploymentHandle of the region's inference, when remote
        self.model = None  # the version remote pricing asks for
        self.warm: set[str] = set()  # versions loaded on the inference side (warm-up answered)
        self._warming: dict[str, asyncio.Task] = {}  # warm-ups under way (held: a task is weakly referenced)
        self.user_model = a.model  # what serve_config.yaml names (user_config can change it)
        self.user_candidate = None  # a candidate named in user_config: control canaries it
        self.assigned = None  # control's ModelAssignment last applied
        self.batchers: dict[str, MicroBatcher] = {}
        config = load_regions(a.regions_file)
        catalog = load_catalog(a.catalog or config.defaults.catalog)
        self.region = a.region
        self._model_lock = threading.Lock()
        self.resources = region_resources(a.region, a.region_resource)  # the actors it creates
        self.bidder = RegionBidder(a.region, config, catalog)
        if a.route_prefix:  # notice URLs lead back to this app, wherever it is deployed
            self.bidder.base_url = config.regions[a.region].public_url.rstrip("/") + a.route_prefix
        self.notices = NoticeCounter()  # unsigned until the ledger settings say otherwise (below)
        self.max_body = config.defaults.max_body_bytes
        self.prefix = config.regions[a.region].route_prefix
        self.backend = a.model_backend
        # The model runtimes' imports take seconds of interpreter time: pay them at start, not
        # in the middle of traffic when user_config or control first names a model.
        import fleet.ml.export  # noqa: F401  (onnx, onnxruntime)
        import fleet.ml.scorer  # noqa: F401
        self.model_error = ""  # the model comes with user_config: see reconfigure
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (plain-Python use)
            self.replica = "local"
        self.cache = None
        self.cache_settings = config.defaults.cache
        if a.cache and self.cache_settings.enabled:
            from fleet.serve import cache_actor

            shards = cache_actor.connect(a.region, config.regions[a.region].cache_shards,
                                         os.environ.get("REDIS_URL") or None, self.cache_settings.shard_options(),
                                         self.resources)
            # Beside the enrichment stage, the part of it until the shard's answer arrived (the
            # rest is this loop's queue): the stage's tail split into shard and ingress.
            self.cache = CacheClient({n: cache_actor.RemoteShard(h) for n, h in shards.items()},
                                     window_s=self.cache_settings.lookup_window_s,
                                     on_answer=lambda s: self.bidder.latency.observe("enrichment_answer", s),
                                     near_ttl_s=self.cache_settings.near_ttl_s if a.near_cache else 0.0,
                                     near_refresh_s=self.cache_settings.near_refresh_s,
                                     near_max_users=self.cache_settings.near_max_users)
            try:  # shards exist before the replica says ready; a slow start degrades, never blocks
                import ray

                ray.get([h.address.remote() for h in shards.values()], timeout=30)
            except Exception as exc:
                log.warning("cache shards of %s not ready yet (%s): lookups default until they are",
                            a.region, exc)
        self._background: list[asyncio.Task] | None = None  # started on the first request
        self.loop_lag = StageHistograms()
        self.link = None
        self.canary = None  # remote pricing: (candidate version, share)
        self.tracer = None
        self.metrics = None
        self.telemetry = config.defaults.telemetry
        if a.telemetry:
            from fleet.obs.metrics import RegionMetrics
            from fleet.obs.tracing import RequestTracer

            self.tracer = RequestTracer(a.region, self.replica, self.telemetry.trace_rate,
                                        max_forced_per_s=self.telemetry.max_forced_traces_per_s)
            self.metrics = RegionMetrics(a.region)
        if a.control and config.defaults.control.enabled:
            self._start_control(a, config)
        self._seen_notices: dict[tuple[str, str], None] = {}
        self._unstreamed: list = []  # notices acknowledged from the spill file, settled on its replay
        # The ledger: signed notice URLs, events to the region's stream, the region's consumer.
        self.emitter = None
        self.ledger = None
        ls = config.defaults.ledger
        if a.ledger and ls.enabled:
            signer = NoticeSigner(ttl_s=ls.notice_ttl_s)
            self.bidder.signer = signer
            self.notices = NoticeCounter(signer)
            redis_url = os.environ.get("REDIS_URL")
            if redis_url:
                from fleet.serve import ledger_actor

                spill = resolve(ls.spill_dir) / f"{a.region}-{self.replica}.bin"
                self.emitter = EventEmitter(a.region, redis_url, spill, max_buffer=ls.max_buffer,
                                            flush_s=ls.flush_s)
                self.emitter.on_replayed = self._settle_unstreamed
                self.emitter.adopt_orphans()
                # The region's consumer feeds billed impressions to the region's shards whenever
                # the region has them (a setting of the region, not of this app).
                cache = self.cache_settings
                self.ledger = ledger_actor.connect(
                    a.region, redis_url, ls.expire_s,
                    config.regions[a.region].cache_shards if cache.enabled else None, cache.shard_options(),
                    self.resources)

    def _start_control(self, a: RegionAppArgs, config) -> None:
        """Spend under control's leases, report to it, apply its pushes (see module docstring)."""
        from fleet.control.link import HttpLink, RayLink
        from fleet.pipeline.pacing import LeaseBudget

        cs = config.defaults.control
        self.control_settings = cs
        self.bidder.budget = LeaseBudget(hold_s=cs.hold_s, clock=self.bidder.clock)
        if cs.url:
            from fleet.control.auth import load_token

            self.link = HttpLink(cs.url, load_token(), a.region, cs.sync_timeout_s)
        else:
            from fleet.serve import control_actor

            self.link = RayLink(control_actor.connect(a.regions_file, catalog=a.catalog, pin_head=a.region_resource),
                                cs.sync_timeout_s)
        self.control_epoch = 0
        self.policy_epoch = -1
        self.control_state = {"syncs": 0, "failures": 0, "last_ok": None, "last_error": ""}
        self._beat_prev: dict[str, float] = {}
        self._lat_prev: dict[str, list[int]] = {}

    def _report(self):
        from fleet.control.messages import Report
        from fleet.obs.histogram import delta, quantile

        b, st = self.bidder.budget, self.bidder.stats
        now = self.bidder.clock()
        b.expire(now)
        figs = {"requests": st["requests"], "answered": st["answered_bid"] + st["nobid"],
                "errors": st["errors"], "late": st["late_suppressed"], "bids": st["answered_bid"],
                "degraded": st["degraded"], "wins": self.notices.counts["win"]}
        beat = {k: v - self._beat_prev.get(k, 0) for k, v in figs.items()}
        beat["interval_s"] = self.control_settings.interval_s
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
        return Report(region=self.region, replica=self.replica, ts=now, epoch=self.control_epoch,
                      spend=b.mark_report(), reserved={k: v for k, v in b.reserved.items() if v > 0},
                      opportunities=dict(b.opportunities), blocked=dict(b.blocked), throttled=dict(b.throttled),
                      units=dict(b.units), heartbeat=beat,
                      stage_p99_ms=p99, versions=self.bidder.take_versions(), model=self.user_model,
                      candidate=self.user_candidate)

    async def _control_loop(self) -> None:
        """Report and renew every interval; a failed sync leaves leases to run out."""
        while True:
            try:
                push = await self.link.sync(self._report())
                await self._apply(push)
                self.control_state["syncs"] += 1
                self.control_state["last_ok"] = self.bidder.clock()
            except Exception as exc:
                self.control_state["failures"] += 1
                self.control_state["last_error"] = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(self.control_settings.interval_s)

    async def _watch_loop(self) -> None:
        """Policy and model pushes between syncs (long-poll)."""
        while True:
            try:
                await self._apply(await self.link.watch(self.control_epoch, 10.0), leases=False)
            except Exception:
                await asyncio.sleep(self.control_settings.interval_s)

    async def _apply(self, push, leases: bool = True) -> None:
        if push.epoch < self.control_epoch:
            return  # an answer from before a newer push: ignore it
        self.control_epoch = push.epoch
        if leases:
            self.bidder.budget.apply(push.leases, push.epoch)
        if push.policy_epoch != self.policy_epoch and push.policy:
            from fleet.config import TierPolicy

            tiers = dict(self.bidder.tiers)
            for tier, pol in push.policy.items():
                try:
                    tiers[tier] = TierPolicy(min_floor_usd=pol.get("min_floor_usd", 0.0),
                                             deals=pol.get("deals", False), budgets=pol["budgets"])
                except Exception as exc:
                    log.error("policy for tier %s refused: %s", tier, exc)
            self.bidder.tiers = tiers
            self.policy_epoch = push.policy_epoch
        if push.model is not None and push.model != self.assigned:
            await self._assign(push.model)

    async def _assign(self, m) -> None:
        """Control's model assignment: the current version, and a candidate for a share."""
        self.assigned = m
        settled = self._wanted_model()
        if self.inference is not None:
            self.model = settled
            self.canary = (m.candidate, m.share) if m.candidate else None
            for version in (self.model, m.candidate):
                self._ensure_warm(version)  # before its first request, not on it
            return
        current = settled
        if current and (self.bidder.scorer is None or self.bidder.scorer.version != current):
            await asyncio.to_thread(self._load_model, current)
        if not m.candidate:
            self.bidder.candidate = None
            return
        held = self.bidder.candidate
        if held is not None and held[1] == m.candidate:
            self.bidder.candidate = (held[0], held[1], m.share)
            return
        from fleet.ml.scorer import load_scorer

        try:
            scorer = await asyncio.to_thread(load_scorer, m.candidate, self.backend)
            scorer.predict(np.zeros((1, N_FEATURES), np.float32))
        except Exception as exc:  # the candidate's share prices by rule, and control sees its errors
            log.error("candidate %s not loaded: %s", m.candidate, exc)
            scorer = None
        self.bidder.candidate = (scorer, m.candidate, m.share)

    def _wanted_model(self) -> str | None:
        """The version this replica should price with now: its declaration, or control's."""
        return self.user_model if self.assigned is None else self.assigned.version_for(self.region, self.user_model)

    def _load_model(self, spec: str) -> None:
        """Load a model version and swap it in; on failure keep pricing as before and say so.

        Loads run one at a time (``reconfigure`` and control's pushes call this from threads),
        and a version no longer wanted when its load ends is not swapped in: a slow load of an
        older decision cannot overwrite a newer one."""
        from fleet.ml.scorer import load_scorer

        with self._model_lock:
            if spec != self._wanted_model():
                return
            try:
                scorer = load_scorer(spec, self.backend)
            except Exception as exc:  # the region keeps bidding on what it had
                self.model_error = f"{spec}: {exc}"
                self.bidder.stats["model.load_error"] += 1
                log.error("model %s not loaded, pricing stays on %s: %s", spec,
                          self.bidder.scorer.version if self.bidder.scorer else "rule", exc)
                return
            scorer.predict(np.zeros((1, N_FEATURES), np.float32))  # warm up before the swap
            if spec != self._wanted_model():
                return
            self.bidder.scorer = scorer  # one assignment: requests see the old or the new, never half
            self.model_error = ""

    async def _bid(self, body: bytes, kw: dict) -> Answer:
        """Stage 1; the cache lookup within the enrichment budget; stages 3-4; prices (in
        process, or from the inference deployment); stages 5-8. Exposures go to the cache off
        the request's path."""
        a = self.bidder.admit(body, **kw)
        if isinstance(a, Answer):
            return a
        profile, lookup = None, "off"
        self._start_background()
        if self.cache is not None:
            self.cache.count_request(self.bidder.clock())
            if a.uid is not None:
                budget = a.dl.stage_deadline("enrichment") - now()
                profile, lookup = await self.cache.lookup(a.uid, budget)
        p = self.bidder.target(a, profile, lookup)
        if isinstance(p, Answer):
            return p
        if self.inference is None:
            answer = self.bidder.price_local(p)
        else:
            answer = await self._price_remote(p)
        if self.emitter is not None:
            if answer.ledger:
                self.emitter.emit_many(answer.ledger)
        elif answer.events and self.cache is not None:
            self.cache.record(answer.events)  # no ledger: exposures count on bids
        return answer

    def _start_background(self) -> None:
        """The replica's loops, once (they need the running event loop, which __init__ has not)."""
        if self._background is not None:
            return
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(watch_loop_lag(self.loop_lag))]  # beside the stages in /stats
        watch_gc(self.loop_lag)
        slow_ms = os.environ.get("FLEET_SLOW_CALLBACK_MS")
        if slow_ms:  # diagnosis: asyncio's debug mode logs every callback that holds the loop longer
            loop.set_debug(True)
            loop.slow_callback_duration = float(slow_ms) / 1000.0
        if self.cache is not None:
            self._background.append(loop.create_task(self._features_loop()))
        if self.emitter is not None:
            self._background.append(loop.create_task(self._ledger_loop()))
        if self.metrics is not None:
            self._background.append(loop.create_task(self._metrics_loop()))
        if self.link is not None:
            self._background.append(loop.create_task(self._control_loop()))
            self._background.append(loop.create_task(self._watch_loop()))

    def _settle_unstreamed(self) -> None:
        """Notices acknowledged from the spill file settle once it reached the stream."""
        held, self._unstreamed = self._unstreamed, []
        for notice in held:
            NoticeSettlement(self.bidder).learn(notice)

    def _first_notice(self, notice) -> bool:
        """False for a notice this replica already saw (exchanges resend): publisher statistics
        count each win or loss once. Bounded; the ledger dedups for money."""
        key = (notice.kind, notice.bid_id)
        if key in self._seen_notices:
            return False
        self._seen_notices[key] = None
        if len(self._seen_notices) > 200_000:
            self._seen_notices.pop(next(iter(self._seen_notices)))
        return True

    async def __del__(self) -> None:
        """Serve's shutdown hook (scale-down, redeploy): flush buffered events, or spill them."""
        if self.emitter is not None:
            try:
                await self.emitter.close()
            except Exception as exc:
                log.error("ledger %s: events not flushed at shutdown: %s", self.region, exc)

    async def _ledger_loop(self) -> None:
        """Keep the region's consumer running (a restarted actor needs its start) and publish
        this replica's pacing view (tentative spend today) for reconciliation."""
        while True:
            try:
                self.ledger.start.remote()
                if self.emitter.redis is not None and self.emitter.redis_up:
                    now = self.bidder.clock()
                    budget = self.bidder.budget
                    # Under control's leases the replica counts bills; the local allowance, bids.
                    billed = hasattr(budget, "spend_days")
                    cids = set(budget.reserved) | set(getattr(budget, "spend", ()))
                    view = {cid: budget.spent_today(cid, now) for cid in cids}
                    if view:
                        view["_kind"] = "billed" if billed else "reserved"
                        key = f"fleet:{self.region}:pacing:{self.replica}"
                        await self.emitter.redis.hset(key, mapping=view)
                        await self.emitter.redis.expire(key, 2 * 86_400)
            except Exception as exc:
                log.warning("ledger supervision: %s", exc)
            await asyncio.sleep(2.0)

    async def _metrics_loop(self) -> None:
        """The replica's counts to Prometheus every ``metrics_s`` (never per request)."""
        while True:
            await asyncio.sleep(self.telemetry.metrics_s)
            try:
                lag = None
                if self.ledger is not None:
                    lag = (await asyncio.wait_for(self.ledger.stats.remote(), 2.0)).get("lag")
                self.metrics.export(dict(self.bidder.stats), self.bidder.latency.snapshot(),
                                    self.cache.summary() if self.cache is not None else None,
                                    self.bidder.budget, lag=lag, wins=self.notices.counts["win"])
            except Exception as exc:
                log.warning("metrics export failed: %s", exc)

    async def _features_loop(self) -> None:
        """Pull the shards' precomputed features every refresh period (never per request)."""
        while True:
            try:
                await self.cache.refresh()
                self.bidder.win_rate.set_anchors(
                    {pid: level for pid, (_rate, level) in self.cache.features.items() if level})
            except Exception as exc:
                log.warning("cache features refresh failed: %s", exc)
            await asyncio.sleep(self.cache_settings.refresh_s)

    async def _price_remote(self, p) -> Answer:
        """Prices from the inference deployment within the pricing budget; a late or failed
        call (replica gone, overloaded) prices by rule."""
        ctrs, source = None, "rule"
        model = self.model
        if (p.paced and self.canary is not None and self.canary[0] in self.warm
                and self.bidder.rng.random() < self.canary[1]):
            # A candidate gets its share once it is loaded: its cold start is not its quality,
            # and would count against it in the canary's error share.
            model = self.canary[0]
        if p.paced and model:
            p.model = model
        t0 = now()
        if p.paced and model and model not in self.warm:
            # The first call of a version loads it on an inference replica, which takes longer
            # than any pricing budget: that happens once, unbounded, off the requests' path, and
            # they price by rule until it has answered.
            self._ensure_warm(model)
            p.dl.degrade("pricing_rule_fallback")
        elif p.paced and model:
            budget = p.dl.stage_deadline("pricing") - now()
            try:
                if budget <= 0:
                    raise TimeoutError
                call = self._batcher(model)(p.rows())
                ctrs, source = await asyncio.wait_for(call, budget), f"model:{model}"
            except Exception as exc:  # timeout, dead replica, anything: the rule price stands
                p.dl.degrade("pricing_rule_fallback")
                self.bidder.stats[f"pricing.remote_{type(exc).__name__}"] += 1
        p.pricing_s = now() - t0
        return self.bidder.finish(p, ctrs, source)

    def _batcher(self, model: str) -> MicroBatcher:
        """One micro-batcher per model version: concurrent requests share one handle call."""
        b = self.batchers.get(model)
        if b is None:
            handle = self.inference.options(multiplexed_model_id=model)
            b = self.batchers[model] = MicroBatcher(lambda rows: handle.remote(rows))
        return b

    def _ensure_warm(self, model: str | None) -> None:
        if model and model not in self.warm and model not in self._warming:
            self._warming[model] = asyncio.get_running_loop().create_task(self._warm_up(model))

    async def _warm_up(self, model: str) -> None:
        try:
            await self.inference.options(multiplexed_model_id=model).remote(np.zeros((1, N_FEATURES), np.float32))
            self.warm.add(model)
        except Exception as exc:  # tried again on a later request or assignment
            log.warning("inference warm-up for %s failed: %s", model, exc)
        finally:
            self._warming.pop(model, None)

    def reconfigure(self, user_config: dict) -> None:
        """``user_config: {model: name/version}`` in serve_config.yaml: switch in place."""
        spec = (user_config or {}).get("model")
        self.user_model = spec
        self.user_candidate = (user_config or {}).get("candidate")  # control canaries it
        if self._wanted_model() != spec:
            return  # control's version stands over this declaration (a canary's baseline, a promotion)
        if self.inference is not None:
            self.model = spec  # the inference replicas load it (multiplexed) on first use
            return
        current = self.bidder.scorer.version if self.bidder.scorer else None
        if spec and spec != current:
            self._load_model(spec)
        elif spec is None and "model" in (user_config or {}):
            self.bidder.scorer = None  # explicit null: back to rule pricing

    def _control_summary(self) -> dict | None:
        if self.link is None:
            return None
        m = self.assigned
        return {**self.control_state, "epoch": self.control_epoch, "policy_epoch": self.policy_epoch,
                "model": {"current": m.current, "candidate": m.candidate, "share": m.share,
                          "over": m.over, "pricing": self._wanted_model()} if m else None,
                **_summary_of(self.bidder.budget)}

    async def __call__(self, request: Request) -> Response:
        arrival = now()
        # Serve puts the application's route prefix in root_path: strip whatever it is, so the
        # same region can also be deployed under another prefix (a canary, a test).
        path = request.url.path
        root = request.scope.get("root_path") or self.prefix
        if path.startswith(root):
            path = path[len(root):]
        method = request.method
        if path == "/openrtb2/bid":
            if method != "POST":
                return _json_response(405, {"error": "use POST"})
            body = await read_capped(request, self.max_body)
            if body is None:
                return _json_response(413, {"error": "body over the size limit", "nbr": 2})
            h = request.headers
            kw = {"content_encoding": h.get("content-encoding"), "accept_encoding": h.get("accept-encoding"),
                  "version": h.get("x-openrtb-version"), "arrival": arrival}
            a = await self._bid(body, kw)
            kept = self.tracer.keep(a, h) if self.tracer is not None else None
            if kept is not None:  # spans are built once the answer is on its way
                asyncio.get_running_loop().call_soon(self.tracer.emit, a, arrival, kept, a.dl)
            return Response(a.body, status_code=a.status, headers=a.headers)
        if path.startswith("/notice/") and method == "GET":
            status, reason, notice = self.notices.handle(path[8:], request.url.query, self.region,
                                                         admit=NoticeSettlement(self.bidder).admit)
            if status == 200:
                where = "stream"
                if self.emitter is not None:
                    # Durable before acknowledged, and before pacing counts it: control takes a
                    # replica's spend as already in the ledger's stream (docs/control.md), so a
                    # notice that waits in the spill file settles once the file is replayed.
                    self._start_background()
                    where = await self.emitter.emit_durable(notice_event(path[8:], notice, self.bidder.clock()))
                first = self._first_notice(notice)
                if first:  # a replayed notice teaches nothing twice (its loss reason is unsigned)
                    if where == "stream":
                        NoticeSettlement(self.bidder).learn(notice)
                    elif len(self._unstreamed) < 200_000:  # beyond: held until the bid's deadline
                        # acknowledged but not in the stream yet: its money stays held, past the
                        # bid's deadline if need be, until the replay lets it count
                        self._unstreamed.append(notice)
                        pin = getattr(self.bidder.budget, "pin", None)
                        if pin is not None and notice.kind == "bill":
                            pin(notice.bid_id)
                if first and self.cache is not None and notice.publisher and notice.kind in ("win", "loss"):
                    self.cache.feedback(notice.publisher, notice.kind == "win", notice.price)
                return Response(b"", status_code=200)
            return _json_response(status, {"error": reason})
        if path == "/ready":
            self._start_background()  # the control loop fetches leases before the first bid
            scorer = self.bidder.scorer
            return _json_response(200, {
                "region": self.region, "campaigns": len(self.bidder.index),
                "pricing": f"model:{scorer.version}" if scorer else "rule",
                "backend": scorer.backend if scorer else None, "model_error": self.model_error,
                "replica": self.replica})
        if path == "/stats":
            return _json_response(200, {"bidder": dict(self.bidder.stats), "notices": dict(self.notices.counts),
                                        "latency": self.bidder.latency.snapshot(),
                                        "loop_lag": self.loop_lag.snapshot(),
                                        "cache": self.cache.summary() if self.cache is not None else None,
                                        "ledger": self.emitter.summary() if self.emitter is not None else None,
                                        "control": self._control_summary()})
        if path == "/cache" and self.cache is not None:
            shards = await asyncio.gather(*(h.stats() for h in self.cache.shards.values()),
                                          return_exceptions=True)
            return _json_response(200, {"ingress": self.cache.summary(), "shards": [
                s if isinstance(s, dict) else {"error": repr(s)} for s in shards]})
        return _json_response(404, {"error": f"no route {path}"})


def _summary_of(budget) -> dict:
    return {"leases": len(budget.leases), "reserved": round(sum(budget.reserved.values()), 6),
            "spend": round(sum(budget.spend.values()), 6), "holds": len(budget.holds),
            "blocked": sum(budget.blocked.values()), "throttled": sum(budget.throttled.values()),
            "opportunities": sum(budget.opportunities.values())}


def build_app(args: RegionAppArgs) -> serve.Application:
    """App builder for ``serve_config.yaml``: deployment options come from ``regions.yaml``."""
    if isinstance(args, dict):
        args = RegionAppArgs.model_validate(args)
    spec = load_regions(args.regions_file).regions[args.region]
    resources = region_resources(args.region, args.region_resource)
    inference = None
    if args.pricing == "remote":
        from fleet.serve.inference_app import DEFAULT_BATCH, Inference

        inference = Inference.options(
            name=f"inference-{args.region}", num_replicas=args.inference_replicas,
            ray_actor_options={"num_cpus": 0, "num_gpus": args.num_gpus, "resources": resources},
            user_config=DEFAULT_BATCH,
        ).bind({"backend": args.model_backend})
    return RegionIngress.options(
        name=f"ingress-{args.region}",
        user_config={"model": args.model},
        num_replicas=spec.replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options={"num_cpus": spec.num_cpus, "resources": resources},
    ).bind(args.model_dump(exclude={"model"}), inference)  # the model travels in user_config only
