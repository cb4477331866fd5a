"""Requests that reach pricing in the same pass of a replica's loop are scored by one model call
and shaded in one pass (``fleet.region.pricing.LocalPricing``): each must get the very prices
it would get alone, its own auction and answer, and none may be left waiting when the call
fails or a neighbour goes away. A region without Ray, the real model (ONNX, in process)."""

from __future__ import annotations

import asyncio
import json

import msgspec
import numpy as np
import pytest

from fleet.config import RegionAppArgs
from fleet.region.runtime import Region
from fleet.sim.traffic import RequestFactory

HEADERS = {"x-openrtb-version": "2.6"}
N = 24


def _region(regions) -> Region:
    # deadlines out of the way: answers here must not depend on how busy the test's machine is
    spec = regions.regions["us-east"].model_copy(update={"max_tmax_ms": 600_000})
    config = regions.model_copy(update={"regions": {**regions.regions, "us-east": spec}})
    region = Region(RegionAppArgs(region="us-east", model_backend="onnx-cpu", cache=False, telemetry=False,
                                  control=False, ledger=False), config=config)
    region.reconfigure({"model": "ctr/v1"})  # as serve_config's user_config sets it
    return region


def _bodies() -> list[bytes]:
    factory = RequestFactory("us-east", seed=5)
    return [msgspec.json.encode({**factory.request(), "tmax": 600_000}) for _ in range(N)]


def _prices(answer) -> list[tuple]:
    if answer.status != 200:
        return [answer.status, answer.reason]
    body = json.loads(answer.body)
    return sorted((b["impid"], b["cid"], b["crid"], b["price"]) for sb in body["seatbid"] for b in sb["bid"])


def test_requests_priced_together_bid_what_each_would_bid_alone(regions):
    async def go():
        alone, together = _region(regions), _region(regions)
        alone.local.together = False  # every request prices at once, by itself
        bodies = _bodies()
        want = [_prices(await alone.bid(b, HEADERS)) for b in bodies]
        got = [_prices(a) for a in await asyncio.gather(*(together.bid(b, HEADERS) for b in bodies))]
        assert got == want
        assert sum(p[0] != 204 for p in want) >= N // 5  # bids, not only no-bids, compared
        shared = together.stats()["priced_together"]
        priced = together.bidder.stats["priced.ctr/v1.model"]
        assert shared == {"passes": 1, "requests": priced} and priced >= N // 4  # one call for them all
        assert alone.stats()["priced_together"] == {"passes": 0, "requests": 0}
        for r in (alone, together):
            assert r.bidder.stats.get("pricing.model_error", 0) == 0
            await r.stop()

    asyncio.run(go())


def test_a_failing_call_prices_every_waiting_request_by_rule_and_leaves_none_waiting(regions):
    async def go():
        region = _region(regions)

        def broken(rows):
            raise RuntimeError("the model failed")

        region.models.scorer.predict = broken
        answers = await asyncio.wait_for(asyncio.gather(*(region.bid(b, HEADERS) for b in _bodies())), 10)
        priced = [a for a in answers if a.status == 200]
        assert priced and all("pricing_rule_fallback" in a.degraded for a in priced)
        assert all(json.loads(a.body)["ext"]["fleet"]["pricing"] == "rule" for a in priced)
        assert region.bidder.stats["pricing.model_error"] >= len(priced)
        await region.stop()

    asyncio.run(go())


def test_a_request_gone_while_waiting_takes_nothing_from_the_others(regions):
    async def go():
        alone, region = _region(regions), _region(regions)
        alone.local.together = False
        bodies = _bodies()
        want = [_prices(await alone.bid(b, HEADERS)) for b in bodies]
        tasks = [asyncio.ensure_future(region.bid(b, HEADERS)) for b in bodies]
        await asyncio.sleep(0)  # every request with candidates is waiting for the pass now
        waiting = [i for i, t in enumerate(tasks) if not t.done()]
        assert len(waiting) >= 2
        gone = waiting[0]
        tasks[gone].cancel()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert isinstance(done[gone], asyncio.CancelledError)
        assert [_prices(a) for i, a in enumerate(done) if i != gone] == [w for i, w in enumerate(want) if i != gone]
        for r in (alone, region):
            await r.stop()

    asyncio.run(go())


def test_one_request_the_model_fails_on_costs_only_that_request(regions, monkeypatch):
    """Its rows fail, or the call fails whenever its rows are in it: it prices by rule, flagged;
    every neighbour still gets the model's prices, the very ones it would get alone."""
    from fleet.pipeline.request import Pending

    async def go(poison: str):
        alone, region = _region(regions), _region(regions)
        alone.local.together = False
        bodies = _bodies()
        want = [_prices(await alone.bid(b, HEADERS)) for b in bodies]
        ids = [json.loads(b)["id"] for b in bodies]
        paced = [i for i, w in enumerate(want) if w[0] != 204]
        bad = ids[paced[0]]
        rows = Pending.rows
        if poison == "rows":
            monkeypatch.setattr(Pending, "rows", lambda p: (_ for _ in ()).throw(ValueError("x"))
                                if p.req.id == bad else rows(p))
        else:  # the model fails on any call that holds the bad request's rows
            marked = []
            monkeypatch.setattr(Pending, "rows", lambda p: marked.append(rows(p)) or marked[-1]
                                if p.req.id == bad else rows(p))
            scorer = region.models.scorer
            predict = scorer.predict

            def fails_with_bad(X):
                if any(np.array_equal(r, m, equal_nan=True) for r in X for m in marked[0]):
                    raise RuntimeError("the model fails on this row")
                return predict(X)

            scorer.predict = fails_with_bad
        got = await asyncio.wait_for(asyncio.gather(*(region.bid(b, HEADERS) for b in bodies)), 10)
        for i, a in enumerate(got):
            if ids[i] == bad:
                assert "pricing_rule_fallback" in a.degraded
            else:
                assert _prices(a) == want[i] and "pricing_rule_fallback" not in a.degraded
        assert region.bidder.stats["pricing.model_error"] == 1  # the bad one, once
        for r in (alone, region):
            await r.stop()
        monkeypatch.undo()

    asyncio.run(go("rows"))
    asyncio.run(go("call"))


def test_each_request_is_charged_its_own_rows_and_its_share_of_the_call(regions, monkeypatch):
    """``pricing_s`` feeds the canary's latency gate: a request priced in a pass of many must not
    be charged everyone's rows and the whole call, or the version with more traffic looks slower
    (a fake clock: each request's rows take 1 s, the call 10 s)."""
    import fleet.pipeline.pricing as pricing
    from fleet.pipeline.request import Pending

    clock = [0.0]
    monkeypatch.setattr(pricing, "now", lambda: clock[0])
    rows = Pending.rows

    def timed_rows(p):
        clock[0] += 1.0
        return rows(p)

    monkeypatch.setattr(Pending, "rows", timed_rows)

    async def go():
        region = _region(regions)
        scorer = region.models.scorer
        predict = scorer.predict

        def slow(X):
            clock[0] += 10.0
            return predict(X)

        scorer.predict = slow
        seen = []
        observe = region.versions.observe
        region.versions.observe = lambda p: (seen.append((len(p.paced), p.pricing_s)), observe(p))
        await asyncio.gather(*(region.bid(b, HEADERS) for b in _bodies()))
        total = sum(n for n, _ in seen)
        assert len(seen) >= 2
        for n, s in seen:
            assert s == pytest.approx(1.0 + 10.0 * n / total)
        await region.stop()

    asyncio.run(go())


def test_a_bid_the_front_has_alone_prices_at_once_and_one_among_others_waits_the_pass(regions):
    """``peers``: the bid front's bids under way. Alone, a bid pays no pass of the loop for a
    call it would not share; among others it shares it."""
    async def go():
        region = _region(regions)
        bodies = _bodies()
        region.local.peers = lambda: 1
        await asyncio.gather(*(region.bid(b, HEADERS) for b in bodies[: N // 2]))
        assert region.stats()["priced_together"] == {"passes": 0, "requests": 0}
        region.local.peers = lambda: N // 2
        await asyncio.gather(*(region.bid(b, HEADERS) for b in bodies[N // 2:]))
        assert region.stats()["priced_together"]["passes"] == 1
        await region.stop()

    asyncio.run(go())


def test_the_version_a_request_is_counted_under_is_the_one_that_priced_it():
    """A load swaps the current scorer in on another thread: the (scorer, version) pair a request
    gets must come from one reading, never the old scorer with the new version's name."""
    from types import SimpleNamespace

    from fleet.region.models import ModelSlots

    old, new = SimpleNamespace(version="ctr/v1"), SimpleNamespace(version="ctr/v2")

    class Swapping(ModelSlots):
        reads = 0

        @property
        def scorer(self):  # the swap lands just after the first reading of each pick
            Swapping.reads += 1
            return old if Swapping.reads == 1 else new

        @scorer.setter
        def scorer(self, value):
            pass

    slots = Swapping("us-east", "ctr/v1")
    scorer, version = slots.pick()
    assert scorer.version == version
