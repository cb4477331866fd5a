"""Money truth at control (plain Python and a real redis-server; no Ray): idempotent writes under
concurrency, one spend converging on the ledger's, leases counted while their bids may bill, and a
first day planned from its own start. The ledger's part is played by writing its Redis keys
(``fleet:<region>:ledger:spend:<day>`` and ``caught_up``) directly.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from fleet.config import load_regions
from fleet.control.api import route
from fleet.control.service import Control
from fleet.sim.pacing_loop import Clock


def _aioredis(url: str):
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, decode_responses=True)


def _interleaving(r) -> None:
    """Every GET and SET yields to the loop first, so two requests in flight interleave there."""
    get, set_ = r.get, r.set

    async def slow_get(*a, **k):
        await asyncio.sleep(0)
        return await get(*a, **k)

    async def slow_set(*a, **k):
        await asyncio.sleep(0)
        return await set_(*a, **k)

    r.get, r.set = slow_get, slow_set


# -- 1. idempotency keys ---------------------------------------------------------------------------

def test_concurrent_writes_with_one_idempotency_key_apply_once(redis_srv):
    """Two PUTs with the same Idempotency-Key and different bodies, concurrently, 30 times: one
    200 and one 422 each time, and the stored flight is the 200's; a retry of the winner's
    request gets its answer again, the loser's a 422 again."""
    clock = Clock()

    async def go():
        r = _aioredis(redis_srv.url)
        control = Control(load_regions(), r, clock=clock)
        await control.start()
        _interleaving(r)
        outcomes = []
        for i in range(30):
            bodies = [json.dumps({"budget": 100 + i, "start": 1_000_001, "end": 1_000_301}).encode(),
                      json.dumps({"budget": 500 + i, "start": 1_000_001, "end": 1_000_301}).encode()]
            cid, key = f"c{i}", f"key-{i}"
            res = await asyncio.gather(*(route(control, "PUT", f"/v1/campaigns/{cid}", body=b, idem=key)
                                         for b in bodies))
            stored = control.pacer.campaigns[cid].flight.budget
            again = [await route(control, "PUT", f"/v1/campaigns/{cid}", body=b, idem=key) for b in bodies]
            outcomes.append((res, stored, again))
        return outcomes

    for res, stored, again in asyncio.run(go()):
        statuses = sorted(s for s, _ in res)
        assert statuses == [200, 422], res
        won = next(b for s, b in res if s == 200)
        assert stored == won["budget"]
        assert [s for s, _ in again] == [s for s, _ in res]
        assert next(b for s, b in again if s == 200) == won


def test_a_same_request_retry_in_flight_waits_for_the_first_answer(redis_srv):
    """The same key and request twice at once: both get the one answer (the second waits for
    it); a write that fails frees the key, so a retry runs."""
    clock = Clock()

    async def go():
        r = _aioredis(redis_srv.url)
        control = Control(load_regions(), r, clock=clock)
        await control.start()
        _interleaving(r)
        runs = []

        async def write():
            runs.append(1)
            await asyncio.sleep(0.05)
            return 200, {"n": len(runs)}

        both = await asyncio.gather(control.idempotent("k", "fp", write), control.idempotent("k", "fp", write))

        def broken():
            raise ValueError("bad request")

        with pytest.raises(ValueError):
            await control.idempotent("k2", "fp", broken)
        retried = await control.idempotent("k2", "fp", lambda: (200, {"ok": True}))
        failed = await control.idempotent("k3", "fp", lambda: (503, {"error": "later"}))
        after = await control.idempotent("k3", "fp", lambda: (200, {"ok": 3}))
        return both, runs, retried, failed, after

    both, runs, retried, failed, after = asyncio.run(go())
    assert both == [(200, {"n": 1}), (200, {"n": 1})] and len(runs) == 1
    assert retried == (200, {"ok": True})
    assert failed[0] == 503 and after == (200, {"ok": 3})
