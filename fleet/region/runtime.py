"""One region replica's runtime in plain Python: the bidder and the region's components.

``Region`` owns the bid path (``fleet.pipeline.bidder.RegionBidder``) and what it works with:
the cache client in front of the region's shards, the ledger's emitter and notice path, the
model versions and the canary (``fleet.region.models``), pricing in process or on the inference
deployment (``fleet.region.pricing``), control's leases and pushes (``fleet.region.control_sync``)
and telemetry. It starts and stops their loops (``start``/``stop``) and answers ``bid``,
``notice``, ``ready``, ``stats``. It needs no Ray: what reaches another process comes in as a
component behind a small interface (``shards``: name -> anything with the shard's async
methods; ``link``: ``sync``/``watch``; ``ledger``: ``start()``/``stats()``; ``inference``:
``score``/``call``). The Serve deployment (``fleet.serve.region_app``) passes Ray's; a test
passes in-process ones, or none.

Enrichment is the one stage that awaits here besides remote pricing: the user's profile comes
from the region's cache shards within the stage's budget, or defaults stand in for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fleet.cache.client import CacheClient
from fleet.config import RegionAppArgs, RegionsFile, load_regions, resolve
from fleet.ledger.emitter import EventEmitter
from fleet.ledger.signing import NoticeSigner
from fleet.obs.histogram import StageHistograms, watch_gc, watch_loop_lag
from fleet.pipeline.bidder import Answer, RegionBidder
from fleet.pipeline.deadline import now
from fleet.pipeline.first_sight import FirstSight
from fleet.pipeline.fanout import collect_partners
from fleet.pipeline.notices import NoticeCounter
from fleet.region import loops
from fleet.region.control_sync import ControlSync
from fleet.region.models import ModelSlots, VersionOutcomes, WarmUps
from fleet.region.notices import NoticePath
from fleet.region.overload import Shedder
from fleet.region.pricing import LocalPricing, RemotePricing

log = logging.getLogger("ray.serve")


@dataclass(frozen=True, slots=True)
class Needs:
    """Which of the region's components a replica runs, from its args and ``regions.yaml``."""

    cache: bool  # look users up in the region's cache shards
    control: bool  # spend under control's leases (else a local allowance)
    signed: bool  # signed notice URLs, verified notices
    stream: bool  # events to the region's ledger stream and its consumer (needs Redis)


def needs(a: RegionAppArgs, config: RegionsFile, redis_url: str | None) -> Needs:
    d = config.defaults
    signed = a.ledger and d.ledger.enabled
    return Needs(a.cache and d.cache.enabled, a.control and d.control.enabled, signed, bool(signed and redis_url))


def _http_link(region: str, cs):
    """Control in another cluster (``control.url``): HTTP with the bearer token."""
    if not cs.url:
        raise ValueError("control is on: pass a link to the control actor, or set control.url")
    from fleet.control.auth import load_token
    from fleet.control.link import HttpLink

    return HttpLink(cs.url, load_token(), region, cs.sync_timeout_s)


class Region:
    def __init__(self, args: RegionAppArgs | dict, *, config: RegionsFile | None = None, catalog=None,
                 replica: str = "local", redis_url: str | None = None, bidder: RegionBidder | None = None,
                 shards: dict | None = None, link=None, ledger=None, inference=None,
                 emitter: EventEmitter | None = None, spill_dir: str | Path | None = None):
        """``args``: the region app's (``serve_config.yaml``); ``config``/``catalog``: instead of
        the files they name. Components (each only where ``needs`` asks for it): ``shards`` for
        the cache client; ``link`` to control (else HTTP when ``control.url`` is set);
        ``ledger``, the region's consumer to keep running; ``inference`` for remote pricing;
        ``redis_url`` for the emitter (its spill file under ``spill_dir``, else
        ``ledger.spill_dir``), or an ``emitter`` of the caller's. ``bidder``: a prepared one
        (its signer is kept; its scorer moves into the model slots, which own the versions)."""
        a = RegionAppArgs.model_validate(args) if isinstance(args, dict) else args
        config = config if config is not None else load_regions(a.regions_file)
        d, spec = config.defaults, config.regions[a.region]
        self.name, self.replica = a.region, replica
        self.prefix = spec.route_prefix
        self.max_body = d.max_body_bytes
        self.needs = need = needs(a, config, redis_url)
        if bidder is None:
            from fleet.campaigns.catalog import load_catalog

            catalog = catalog if catalog is not None else load_catalog(a.catalog or d.catalog)
            bidder = RegionBidder(a.region, config, catalog)
        self.bidder = bidder
        if a.route_prefix:  # notice URLs lead back to this app, wherever it is deployed
            bidder.base_url = spec.public_url.rstrip("/") + a.route_prefix
        # The model runtimes' imports take seconds of interpreter time: pay them at start, not
        # in the middle of traffic when user_config or control first names a model.
        import fleet.ml.export  # noqa: F401  (onnx, onnxruntime)
        import fleet.ml.scorer  # noqa: F401

        self.cache = None
        cs = d.cache
        if need.cache and shards is not None:
            # Beside the enrichment stage, the part of it until the shard's answer arrived (the
            # rest is this loop's queue): the stage's tail split into shard and ingress.
            self.cache = CacheClient(shards, window_s=cs.lookup_window_s,
                                     on_answer=lambda s: bidder.latency.observe("enrichment_answer", s),
                                     near_ttl_s=cs.near_ttl_s if a.near_cache else 0.0,
                                     near_refresh_s=cs.near_refresh_s, near_max_users=cs.near_max_users)
        self.refresh_s = cs.refresh_s
        self.telemetry = d.telemetry
        self.tracer = self.metrics = None
        if a.telemetry:
            from fleet.obs.metrics import RegionMetrics
            from fleet.obs.tracing import RequestTracer

            self.tracer = RequestTracer(a.region, replica, self.telemetry.trace_rate,
                                        max_forced_per_s=self.telemetry.max_forced_traces_per_s)
            self.metrics = RegionMetrics(a.region)
        # The ledger: signed notice URLs, events to the region's stream, the region's consumer.
        ls = d.ledger
        if need.signed:
            bidder.signer = bidder.signer or NoticeSigner(ttl_s=ls.notice_ttl_s)
        if need.stream and emitter is None:
            spill = resolve(spill_dir if spill_dir is not None else ls.spill_dir) / f"{a.region}-{replica}.bin"
            emitter = EventEmitter(a.region, redis_url, spill, max_buffer=ls.max_buffer, flush_s=ls.flush_s)
        self.emitter = emitter if need.signed else None
        self.ledger = ledger
        counter = NoticeCounter(bidder.signer if need.signed else None)
        self.notices = NoticePath(a.region, bidder, counter, self.emitter, self.cache, before_durable=self.start)
        if self.emitter is not None:
            self.emitter.adopt_orphans()
        # The model versions (the slots own them: the bidder's own scorer moves in) and pricing.
        self.models = ModelSlots(a.region, a.model, a.model_backend, stats=bidder.stats, scorer=bidder.scorer,
                                 warmups=WarmUps(inference.call) if inference is not None else None)
        bidder.scorer = None
        self.versions = VersionOutcomes()
        self.remote = RemotePricing(bidder, self.models, self.versions, inference) if inference is not None else None
        self.local = LocalPricing(bidder, self.models, self.versions)
        # Stage 6: the region's demand partners (none configured: no fan-out at all).
        self.partners = None
        if spec.partners:
            from fleet.pipeline.fanout import Partners

            self.partners = Partners(spec.partners, d.partners, list(config.tiers), config.currencies,
                                     clock=bidder.clock)
        self.control = None
        if need.control:  # spend under control's leases, report to it, apply its pushes
            from fleet.pipeline.pacing import LeaseBudget

            bidder.budget = LeaseBudget(hold_s=d.control.hold_s, clock=bidder.clock)
            self.control = ControlSync(a.region, replica, bidder, link or _http_link(a.region, d.control),
                                       d.control, self.models, self.versions, lambda: counter.counts["win"],
                                       partners=self.partners)
        self.loop_lag = StageHistograms()
        self.shedder = Shedder(bidder, d.shed_below_ms)  # overload: 204 at once (fleet/region/overload.py)
        self.sightings = FirstSight()  # a miss for a user this replica never looked up is a cold user
        self.warm, self.warm_error = False, ""  # ready once one bid went through the path (warmup.py)
        self._tasks: list[asyncio.Task] | None = None  # started on the first request (see start)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """The replica's loops, once (idempotent; they need a running event loop)."""
        if self._tasks is not None:
            return
        loop = asyncio.get_running_loop()
        # beside the stages in stats; resting while no request comes (an idle region's replica
        # woke 50 times a second for it: docs/benchmarks.md, "Idle background")
        self._tasks = [loop.create_task(watch_loop_lag(self.loop_lag, busy=self._work))]
        watch_gc(self.loop_lag)
        self._tasks.append(loop.create_task(self._warm_up()))
        slow_ms = os.environ.get("FLEET_SLOW_CALLBACK_MS")
        if slow_ms:  # diagnosis: asyncio's debug mode logs every callback that holds the loop longer
            loop.set_debug(True)
            loop.slow_callback_duration = float(slow_ms) / 1000.0
        b, wins = self.bidder, lambda: self.notices.counter.counts["win"]
        if self.cache is not None:
            self._tasks.append(loop.create_task(loops.refresh_features(self.cache, b.win_rate, self.refresh_s)))
        if self.emitter is not None:
            self._tasks.append(loop.create_task(
                loops.supervise_ledger(self.ledger, self.emitter, b, self.name, self.replica)))
        if self.metrics is not None:
            self._tasks.append(loop.create_task(
                loops.export_metrics(self.metrics, self.telemetry.metrics_s, b, self.cache, self.ledger, wins,
                                     partners=self.partners)))
        if self.control is not None:
            self._tasks.append(loop.create_task(self.control.sync_loop()))
            self._tasks.append(loop.create_task(self.control.watch_loop()))

    def _work(self) -> int:
        """Bid requests (shed ones too) and notices so far: the loop-lag watch rests while this
        stands still."""
        return self.bidder.stats["requests"] + sum(self.notices.counter.counts.values())

    async def stop(self) -> None:
        """Stop the loops; flush buffered events, or spill them (nothing is left only in memory)."""
        for task in self._tasks or ():
            task.cancel()
        if self.partners is not None:
            await self.partners.close()
        if self.emitter is not None:
            try:
                await self.emitter.close()
            except Exception as exc:
                log.error("ledger %s: events not flushed at shutdown: %s", self.name, exc)

    def reconfigure(self, user_config: dict | None) -> None:
        """``user_config`` of serve_config.yaml (model, candidate): applied in place."""
        self.models.reconfigure(user_config)

    # -- requests -------------------------------------------------------------------------

    async def bid(self, body: bytes, headers, arrival: float | None = None) -> Answer:
        """``headers``: the request's (lower-case names); ``arrival``: the handler's first clock
        reading. The deadline starts at the ingress's arrival stamp when there is a plausible
        one (``fleet.region.overload``); a request it leaves too little time is shed, undecoded."""
        arrival, queued = self.shedder.arrived(headers, now() if arrival is None else arrival)
        a = self.shedder.before_decode(arrival, queued) or await self._bid(
            body, {"content_encoding": headers.get("content-encoding"),
                   "accept_encoding": headers.get("accept-encoding"),
                   "version": headers.get("x-openrtb-version"), "arrival": arrival})
        if a.spent:
            a.spent = {"queue": queued, **a.spent}  # the first stage of the request's trace
        kept = self.tracer.keep(a, headers) if self.tracer is not None else None
        if kept is not None:  # spans are built once the answer is on its way
            asyncio.get_running_loop().call_soon(self.tracer.emit, a, arrival, kept, a.dl)
        return a

    async def _bid(self, body: bytes, kw: dict) -> Answer:
        """Stage 1; the cache lookup within the enrichment budget; stages 3-4; prices (in
        process, or from the inference deployment); stages 5-8. Events and exposures leave the
        request's path."""
        b = self.bidder
        a = b.admit(body, **kw)
        if isinstance(a, Answer):
            return a
        shed = self.shedder.after_decode(a.dl)  # its own tmax left too little after the queue
        if shed is not None:
            return shed
        profile, lookup = None, "off"
        self.start()
        if self.cache is not None:
            self.cache.count_request(b.clock())
            if a.uid is not None:
                budget = a.dl.stage_deadline("enrichment") - now()
                profile, lookup = await self.cache.lookup(a.uid, budget)
                lookup = self.sightings.outcome(a.uid, lookup)
        # Stage 6 starts here, once enriched: the partners' calls go out (the first yield sends
        # them) and run while targeting and pricing do; the auction awaits them.
        rnd = self.partners.start(a) if self.partners is not None else None
        if rnd is not None and rnd.tasks:
            await asyncio.sleep(0)
        p = b.target(a, profile, lookup)
        if isinstance(p, Answer):
            if rnd is not None:
                rnd.settle_later()
            return p
        p.fanout = rnd
        if self.remote is None:
            if rnd is not None:
                await collect_partners(p)
            answer = await self.local.price(p)
        else:
            answer = await self.remote.price(p)  # collects the partners after the model's answer
        if rnd is not None:
            rnd.close(p.winners if answer.status == 200 else None, p.offered)
        if self.emitter is not None:
            if answer.ledger:
                self.emitter.emit_many(answer.ledger)
        elif answer.events and self.cache is not None:
            self.cache.record(answer.events)  # no ledger: exposures count on bids
        return answer

    async def notice(self, kind: str, query: str) -> tuple[int, str]:
        """``GET /notice/{kind}?{query}``: (status, reason); see ``fleet.region.notices``."""
        return await self.notices.handle(kind, query)

    async def _warm_up(self) -> None:
        """One warm-up bid through the whole path (``fleet.region.warmup``), retried until it
        answers (the region's shards may still be starting); each attempt bounded, and
        ``warm_error`` says why it is not done (what it waited on), never a silent wait."""
        from fleet.region.warmup import warm_up

        await warm_up(self)

    def ready(self) -> dict:
        """``ready``: the replica has run its warm-up bid (and a remote model version has loaded
        on the inference side); ``/ready`` answers 503 until then."""
        self.start()  # the control loop fetches leases before the first bid; the warm-up starts
        scorer = self.models.scorer
        current = self.models.current
        if current and not self.models.ready(current) and self.models.warmups is not None:
            self.models.warmups.ensure(current)  # a remote version loads before traffic, not on it
        ready = self.warm and (not current or self.models.ready(current))
        warmups = self.models.warmups  # remote pricing: why the current version is not loaded yet
        return {"region": self.name, "ready": ready, "warm_error": self.warm_error or None,
                "campaigns": len(self.bidder.index),
                "pricing": f"model:{scorer.version}" if scorer else "rule",
                "backend": scorer.backend if scorer else None,
                "model_error": self.models.error or (warmups.error if warmups is not None else ""),
                "replica": self.replica}

    def stats(self) -> dict:
        b = self.bidder
        return {"bidder": dict(b.stats), "notices": dict(self.notices.counter.counts),
                "latency": b.latency.snapshot(), "loop_lag": self.loop_lag.snapshot(),
                "priced_together": {"passes": self.local.batches, "requests": self.local.batched},
                "cache": self.cache.summary() if self.cache is not None else None,
                "ledger": self.emitter.summary() if self.emitter is not None else None,
                "control": self.control.summary() if self.control is not None else None,
                "partners": self.partners.summary() if self.partners is not None else {},
                "partner_participation": self.partners.stats.participation() if self.partners is not None else {}}

    async def cache_stats(self) -> dict | None:
        """Every shard's own figures beside the ingress's (None without a cache)."""
        if self.cache is None:
            return None
        shards = await asyncio.gather(*(h.stats() for h in self.cache.shards.values()), return_exceptions=True)
        return {"ingress": self.cache.summary(),
                "shards": [s if isinstance(s, dict) else {"error": repr(s)} for s in shards]}
