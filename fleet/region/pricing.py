"""Stage 5 for a region replica: the version ``ModelSlots.pick`` chose prices the candidates, in
this process (``pricing: local``) or on the region's inference deployment (``pricing: remote``),
and the outcome is counted for that version (``VersionOutcomes``).

Remote pricing sends a request's candidate rows through the replica's micro-batcher to the
inference deployment and waits at most what is left of the pricing budget; a late or failed call
(replica gone, overloaded) prices by rule, flagged. ``inference`` is anything with
``score(version, rows)`` (awaitable, batched) and ``call(version, rows)`` (one direct call, the
warm-up): ``fleet.serve.inference_app.InferenceClient`` in Serve, a fake in tests.
"""

from __future__ import annotations

import asyncio

from fleet.pipeline.deadline import now
from fleet.pipeline.fanout import collect_partners
from fleet.pipeline.request import Answer, Pending
from fleet.region.models import ModelSlots, VersionOutcomes


def price_local(bidder, models: ModelSlots, versions: VersionOutcomes, p: Pending) -> Answer:
    """Stages 5-8 priced by the in-process version the slots pick (or by rule)."""
    answer = bidder.price_local(p, models.pick() if p.paced else None)
    if p.model is not None:
        versions.observe(p)
    return answer


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
