"""The region's cache shards as Ray actors behind the real ingress, with the session's real
redis-server: enrichment hits, a shard killed under load, a Redis outage under load, a slow
shard. The model-pricing app /model/us-east runs with the cache (see conftest)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from fleet.sim.traffic import RequestFactory

pytestmark = pytest.mark.slow
APP = "/model/us-east"
REGION = "us-east"
HEADERS = {"x-openrtb-version": "2.6", "content-type": "application/json"}


def shard_handles():
    import ray

    from fleet.serve.cache_actor import NAMESPACE, shard_names

    return {n: ray.get_actor(n, namespace=NAMESPACE) for n in shard_names(REGION, 2)}


def requests(tag: str, n: int, users: int, seed: int = 5) -> list[dict]:
    """Plausible requests with user-level data allowed, spread over ``users`` users."""
    f = RequestFactory(REGION, seed)
    out = []
    for i in range(n):
        r = f.request()
        r["id"] = f"{tag}-{i}"
        r["regs"] = {"coppa": 0}
        r["user"] = {"id": f"{tag}-u{i % users}"}
        r["device"].pop("lmt", None)
        r["device"].pop("dnt", None)
        out.append(r)
    return out


async def _send(base: str, reqs: list[dict], concurrency: int = 16, between=None):
    """Post every request; returns [(request, status, headers, body)]. ``between(i)`` runs
    after the i-th answer (to kill something mid-load)."""
    sem = asyncio.Semaphore(concurrency)
    out = [None] * len(reqs)
    done = 0

    async with httpx.AsyncClient(timeout=10) as client:
        async def one(i, r):
            nonlocal done
            async with sem:
                resp = await client.post(f"{base}{APP}/openrtb2/bid", content=json.dumps(r), headers=HEADERS)
                out[i] = (r, resp.status_code, resp.headers, resp.content)
                done += 1
                if between is not None:
                    await between(done)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))
    return out


def winners(results) -> list[tuple[str, str, str]]:
    """(user, campaign, event id) of every bid that left."""
    out = []
    for req, status, _, body in results:
        if status == 200:
            for sb in json.loads(body)["seatbid"]:
                for b in sb["bid"]:
                    out.append((req["user"]["id"], b["cid"], f"{req['id']}:{b['impid']}"))
    return out


def stats(base):
    return httpx.get(f"{base}{APP}/stats", timeout=5).json()


def wait_outbox_drained(base, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = stats(base)["cache"]
        if s["outbox"] == 0:
            return s
        time.sleep(0.1)
    raise AssertionError(f"ingress outbox not drained: {s}")


def missing_in_redis(redis_server, wins) -> list:
    r = redis_server.client()
    return [w for w in wins if r.zscore(f"fleet:{REGION}:f:{w[0]}", f"{w[1]}|{w[2]}") is None]


def test_second_sight_of_a_user_is_a_cache_hit(fleet_http):
    req = requests("hit", 1, 1)[0]
    req["user"]["data"] = [{"id": "dmp", "segment": [{"id": "sports-fan"}]}]
    before = stats(fleet_http)["bidder"]
    httpx.post(f"{fleet_http}{APP}/openrtb2/bid", content=json.dumps(req), headers=HEADERS)
    for attempt in range(50):  # the miss is filled in the background
        req2 = {**req, "id": f"hit-again-{attempt}"}
        r = httpx.post(f"{fleet_http}{APP}/openrtb2/bid", content=json.dumps(req2), headers=HEADERS)
        if "enrichment" not in r.headers.get("x-fleet-degraded", ""):
            break
        time.sleep(0.05)
    after = stats(fleet_http)
    first_sight = sum(after["bidder"].get(f"enrich.{k}", 0) - before.get(f"enrich.{k}", 0)
                      for k in ("miss", "timeout"))
    assert first_sight >= 1
    assert after["bidder"].get("enrich.hit", 0) == before.get("enrich.hit", 0) + 1
    assert after["cache"]["lookups"] > 0 and after["cache"]["hit_rate"] > 0


def shard_view(user: str, timeout: float = 10.0):
    """The user's profile as the owning shard serves it (read through from Redis if needed)."""
    import ray

    from fleet.cache.ring import HashRing

    handles = shard_handles()
    owner = handles[HashRing(list(handles)).owner(user)]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        (p,) = ray.get(owner.lookup.remote([user]))
        if p is not None:
            return p
        time.sleep(0.05)
    raise AssertionError(f"{user} never loaded")


def _pid(actor, timeout=30.0):
    import ray

    end = time.monotonic() + timeout
    while True:
        try:
            return ray.get(actor.pid.remote(), timeout=5)
        except ray.exceptions.RayError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_killing_a_shard_under_load_loses_no_counted_bid(fleet_http, redis_server):
    import ray

    victim = shard_handles()["cache-us-east-0"]
    pid_before = _pid(victim)

    async def kill_midway(done):
        if done == 150:
            ray.kill(victim, no_restart=False)  # the actor comes back empty, same name

    results = asyncio.run(_send(fleet_http, requests("kill", 400, 60), between=kill_midway))
    assert all(status in (200, 204) for _, status, _, _ in results)  # never a 5xx
    wins = winners(results)
    assert len(wins) > 30, "the load should produce bids"
    drained = wait_outbox_drained(fleet_http)
    assert _pid(victim) != pid_before  # it really was restarted
    assert missing_in_redis(redis_server, wins) == []
    # and the restarted shard serves every one of them, read through from Redis
    by_user: dict[str, set] = {}
    for user, cid, eid in wins:
        by_user.setdefault(user, set()).add((cid, eid))
    for user, evs in by_user.items():
        p = shard_view(user)
        served = {(cid, eid) for cid, pairs in p.freq.items() for eid, _ in pairs}
        assert evs <= served, (user, evs - served)
    assert drained.get("outbox_dropped", 0) == 0


def test_redis_outage_under_load_queues_and_then_writes_everything(fleet_http, redis_server):
    import ray

    handles = shard_handles()
    # users the shards have loaded before the outage
    warm = requests("outage", 300, 40)
    asyncio.run(_send(fleet_http, warm[:40]))
    redis_server.stop()
    try:
        results = asyncio.run(_send(fleet_http, warm[40:]))
        assert all(status in (200, 204) for _, status, _, _ in results)
        wait_outbox_drained(fleet_http)
        during = ray.get([h.stats.remote() for h in handles.values()])
        assert any(s["redis"] == "down" for s in during)
        assert sum(s["pending"] for s in during) > 0
    finally:
        redis_server.start()
    end = time.monotonic() + 20
    while time.monotonic() < end:
        after = ray.get([h.stats.remote() for h in handles.values()])
        if all(s["pending"] == 0 and s["redis"] == "up" for s in after):
            break
        time.sleep(0.2)
    assert all(s["pending"] == 0 and s["dropped"] == 0 for s in after), after
    wins = winners(results)
    assert len(wins) > 20
    assert missing_in_redis(redis_server, wins) == []


def test_a_slow_shard_turns_into_defaults_never_a_late_answer(fleet_http):
    import ray

    handles = shard_handles()
    before = stats(fleet_http)["bidder"]
    ray.get([h.set_delay.remote(0.3) for h in handles.values()])
    try:
        results = asyncio.run(_send(fleet_http, requests("slow", 40, 40), concurrency=8))
    finally:
        ray.get([h.set_delay.remote(0.0) for h in handles.values()])
    assert all(status in (200, 204) for _, status, _, _ in results)
    # every request that got past admission (so was looked up) went on with defaults
    looked_up = [h for _, status, h, _ in results
                 if status == 200 or h.get("x-fleet-reason") in ("no_eligible_bid", "no_bid_above_floor")]
    assert len(looked_up) > 20
    for headers in looked_up:
        assert "enrichment_timeout" in headers.get("x-fleet-degraded", ""), dict(headers)
    after = stats(fleet_http)["bidder"]
    assert after.get("late_suppressed", 0) == before.get("late_suppressed", 0)
    assert after.get("enrich.timeout", 0) - before.get("enrich.timeout", 0) == len(looked_up)
