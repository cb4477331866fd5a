"""Stage 5 for a region replica: the version ``ModelSlots.pick`` chose prices the candidates, in
this process (``pricing: local``) or on the region's inference deployment (``pricing: remote``),
and the outcome is counted for that version (``VersionOutcomes``).

Local pricing prices together the requests that reach it in the same pass of the event loop
(``LocalPricing``); remote pricing sends a request's candidate rows through the replica's micro-batcher to the
inference deployment and waits at most what is left of the pricing budget; a late or failed call
(replica gone, overloaded) prices by rule, flagged. ``inference`` is anything with
``score(version, rows)`` (awaitable, batched) and ``call(version, rows)`` (one direct call, the
warm-up): ``fleet.serve.inference_app.InferenceClient`` in Serve, a fake in tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fleet.pipeline.deadline import now
from fleet.pipeline.fanout import collect_partners
from fleet.pipeline.pricing import model_prices_many, price_job, score
from fleet.pipeline.request import Answer, Pending
from fleet.region.models import ModelSlots, VersionOutcomes

log = logging.getLogger("fleet.region")


class LocalPricing:
    """Stages 5-8 in process, with one model call and one shading pass for every request that
    reaches pricing in the same pass of the event loop (the cache shards' answers come back
    together and wake their requests together): a call costs tens of microseconds whatever its
    rows, another row a few (docs/benchmarks.md). The prices are each request's own, bit for
    bit (``model_prices_many``); its auction, reservation and answer stay its own (``finish``).
    A request with nothing to score prices at once, and so does one with no other bid under way
    (``peers``: the bid front's count of the bids it has taken and not answered, which includes
    those not started yet; the wait would cost it a pass of the loop for nothing). Without that
    count (Serve's own HTTP path) a request with candidates always waits the pass: the replica
    cannot tell the requests that have arrived but not started, which is the usual case at
    saturation, where sharing the call counts. ``together`` false: every request prices alone
    (tests compare the two)."""

    def __init__(self, bidder, models: ModelSlots, versions: VersionOutcomes):
        self.bidder, self.models, self.versions = bidder, models, versions
        self.together = True
        self.peers: Callable[[], int] | None = None
        self._waiting: list[tuple[Pending, object, asyncio.Future]] = []
        self.batches = self.batched = 0  # passes that priced several requests, and those requests

    async def price(self, p: Pending) -> Answer:
        choice = self.models.pick() if p.paced else None
        if choice is None or choice[0] is None or not self.together or (
                self.peers is not None and self.peers() <= 1):
            answer = self.bidder.price_local(p, choice)  # at once, alone (or by rule)
        else:
            scorer, p.model = choice
            fut = asyncio.get_running_loop().create_future()
            if not self._waiting:
                asyncio.get_running_loop().call_soon(self._flush)
            self._waiting.append((p, scorer, fut))
            ctrs, priced, source = await fut
            answer = self.bidder.finish(p, ctrs, source, priced)
        if p.model is not None:
            self.versions.observe(p)
        return answer

    def _flush(self) -> None:
        waiting, self._waiting = [w for w in self._waiting if not w[2].done()], []  # done: gone
        groups: dict[int, list] = {}
        for w in waiting:
            groups.setdefault(id(w[1]), []).append(w)
        for group in groups.values():
            try:
                self._price(group)
            except Exception as exc:  # a bug, not the model's failure: these fail (500), none waits
                log.exception("pricing %d requests together failed", len(group))
                for _p, _scorer, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)

    def _price(self, group: list) -> None:
        ps, scorer = [w[0] for w in group], group[0][1]
        source = f"model:{scorer.version}"
        spent = [0.0] * len(ps)
        ctrs = score(ps, scorer, self.bidder.stats, spent)  # each request's failure its own
        try:
            jobs = [price_job(p, c, source) for p, c in zip(ps, ctrs) if c is not None]
            priced = iter(model_prices_many(jobs, self.bidder.win_rate))
            results = [(c, next(priced), source) if c is not None else (None, None, "rule") for c in ctrs]
        except Exception:  # never a request left waiting: the model's ones price by rule, flagged
            log.exception("prices of %d requests together failed", len(ps))
            for p, c in zip(ps, ctrs):
                if c is not None:
                    p.dl.degrade("pricing_rule_fallback")
                    self.bidder.stats["pricing.model_error"] += 1
            results = [(None, None, "rule")] * len(ps)
        if len(ps) > 1:
            self.batches += 1
            self.batched += len(ps)
        for (p, _scorer, fut), result, t in zip(group, results, spent):
            p.pricing_s = t  # its own rows, and the call by its share of the rows (canary gates)
            fut.set_result(result)


class RemotePricing:
    def __init__(self, bidder, models: ModelSlots, versions: VersionOutcomes, inference):
        self.bidder = bidder
        self.models = models
        self.versions = versions
        self.inference = inference

    async def price(self, p: Pending) -> Answer:
        """Stages 5-8 with the inference deployment's probabilities, or the rule."""
        ctrs, source = None, "rule"
        model = self.models.pick()[1] if p.paced else None
        if model:
            p.model = model
        t0 = now()
        if model and not self.models.ready(model):
            # The first call of a version loads it on an inference replica, which takes longer
            # than any pricing budget: that happens once, unbounded, off the requests' path, and
            # they price by rule until it has answered.
            self.models.warmups.ensure(model)
            p.dl.degrade("pricing_rule_fallback")
        elif model:
            budget = p.dl.stage_deadline("pricing") - now()
            try:
                if budget <= 0:
                    raise TimeoutError
                call = self.inference.score(model, p.rows())
                ctrs, source = await asyncio.wait_for(call, budget), f"model:{model}"
            except Exception as exc:  # timeout, dead replica, anything: the rule price stands
                p.dl.degrade("pricing_rule_fallback")
                self.bidder.stats[f"pricing.remote_{type(exc).__name__}"] += 1
        p.pricing_s = now() - t0
        if p.fanout is not None:  # stage 6 ran beside the model's call; its offers join the auction
            await collect_partners(p)
        answer = self.bidder.finish(p, ctrs, source)
        if p.model is not None:
            self.versions.observe(p)
        return answer
