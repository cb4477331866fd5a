"""The region's cache shards and ledger behind the real ingress, with the session's real
redis-server: enrichment hits, a shard killed under load, a Redis outage under load (the ledger
loses no event, the shards no count), a slow shard. The model-pricing app /model/us-east runs
with the cache (see conftest). Exposures count on billing notices, through the ledger."""

from __future__ import annotations

import asyncio
import json
import time

from urllib.parse import urlsplit

import httpx
import pytest

from fleet.sim.notices import substitute
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


def _bill_url(base: str, burl: str, price: float) -> str:
    u = urlsplit(substitute(burl, auction_id="", imp_id="", price=price))
    return f"{base}{u.path}?{u.query}"


async def _send(base: str, reqs: list[dict], concurrency: int = 16, between=None, bill: bool = True):
    """Post every request and, as the exchange would, call the billing URL of every bid;
    returns [(request, status, headers, body)]. ``between(i)`` runs after the i-th answer."""
    sem = asyncio.Semaphore(concurrency)
    out = [None] * len(reqs)
    done = 0

    async with httpx.AsyncClient(timeout=10) as client:
        async def one(i, r):
            nonlocal done
            async with sem:
                resp = await client.post(f"{base}{APP}/openrtb2/bid", content=json.dumps(r), headers=HEADERS)
                out[i] = (r, resp.status_code, resp.headers, resp.content)
                if bill and resp.status_code == 200:
                    for sb in resp.json()["seatbid"]:
                        for b in sb["bid"]:
                            n = await client.get(_bill_url(base, b["burl"], b["price"] * 0.8))
                            assert n.status_code == 200, n.text
                done += 1
                if between is not None:
                    await between(done)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))
    return out


def winners(results) -> list[tuple[str, str, str]]:
    """(user, campaign, event id) of every bid that left (and was billed)."""
    out = []
    for req, status, _, body in results:
        if status == 200:
            for sb in json.loads(body)["seatbid"]:
                for b in sb["bid"]:
                    out.append((req["user"]["id"], b["cid"], f"{req['id']}:{b['impid']}"))
    return out


def ledger_runner():
    import ray

    from fleet.serve.cache_actor import NAMESPACE

    return ray.get_actor(f"ledger-{REGION}", namespace=NAMESPACE)


def wait_settled(base, timeout=40):
    """Until nothing is in flight: the ingress's outbox and event buffer, the ledger's lag, the
    ledger's outbox of billed impressions, and the ledger runner's writes to the shards."""
    import ray

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = stats(base)
        try:
            lr = ray.get(ledger_runner().stats.remote(), timeout=5)
        except ray.exceptions.RayError:
            time.sleep(0.2)
            continue
        leds = [httpx.get(f"{base}{app}/stats", timeout=5).json()["ledger"]
                for app in ("/us-east", APP, "/remote/us-east")]
        if (s["cache"]["outbox"] == 0 and all(x["buffered"] == 0 and x["spill_bytes"] == 0 for x in leds)
                and lr["lag"] == 0 and not lr["outbox"] and lr["cache"]["outbox"] == 0 and lr["running"]):
            return s, lr
        time.sleep(0.2)
    raise AssertionError(f"not settled: {s}, {lr}")


def stats(base):
    return httpx.get(f"{base}{APP}/stats", timeout=5).json()


def emitted_in_region(base) -> int:
    """Events emitted by every app serving the region (bids go to /model/us-east, their notices
    to the region's own URL, /us-east)."""
    return sum(httpx.get(f"{base}{app}/stats", timeout=5).json()["ledger"]["emitted"]
               for app in ("/us-east", APP, "/remote/us-east"))


def missing_in_redis(redis_server, wins) -> list:
    """Billed impressions with no counter in Redis (each with the ledger's record of its user's
    events, to say why)."""
    r = redis_server.client()
    return [(w, r.zrange(f"fleet:{REGION}:f:{w[0]}", 0, -1)) for w in wins
            if r.zscore(f"fleet:{REGION}:f:{w[0]}", f"{w[1]}|{w[2]}") is None]


def test_second_sight_of_a_user_is_a_cache_hit(fleet_http):
    req = requests("hit", 1, 1)[0]
    req["user"]["data"] = [{"id": "dmp", "segment": [{"id": "sports-fan"}]}]
    before = stats(fleet_http)["bidder"]
    httpx.post(f"{fleet_http}{APP}/openrtb2/bid", content=json.dumps(req), headers=HEADERS)
    for attempt in range(50):  # the miss is filled in the background
        req2 = {**req, "id": f"hit-again-{attempt}"}
        r = httpx.post(f"{fleet_http}{APP}/openrtb2/bid", content=json.dumps(req2), headers=HEADERS)
        # a first sight is a cold user, not degraded (issue 23): wait for the hit itself
        if stats(fleet_http)["bidder"].get("enrich.hit", 0) > before.get("enrich.hit", 0):
            break
        time.sleep(0.05)
    assert "enrichment" not in r.headers.get("x-fleet-degraded", "")
    after = stats(fleet_http)
    first_sight = sum(after["bidder"].get(f"enrich.{k}", 0) - before.get(f"enrich.{k}", 0)
                      for k in ("miss", "timeout", "cold_user"))
    assert first_sight >= 1
    assert after["bidder"].get("enrich.hit", 0) == before.get("enrich.hit", 0) + 1
    assert after["cache"]["lookups"] > 0 and after["cache"]["hit_rate"] > 0
    # the third sight is answered from the ingress's own near-cache, not the shard
    r = httpx.post(f"{fleet_http}{APP}/openrtb2/bid", content=json.dumps({**req, "id": "hit-third"}),
                   headers=HEADERS)
    assert r.status_code in (200, 204) and "enrichment" not in r.headers.get("x-fleet-degraded", "")
    third = stats(fleet_http)
    assert third["cache"].get("near_hit", 0) == after["cache"].get("near_hit", 0) + 1
    assert third["bidder"].get("enrich.hit", 0) == after["bidder"].get("enrich.hit", 0) + 1


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
    settled, runner = wait_settled(fleet_http)
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
    assert settled["cache"].get("outbox_dropped", 0) == 0 and runner["cache"].get("outbox_dropped", 0) == 0


def test_redis_outage_under_load_loses_no_event_and_no_count(fleet_http, redis_server):
    """Redis stops for 10 s under load: the ingress buffers and spills events, the shards queue
    their writes; after the restart every emitted event is in the ledger once and every billed
    impression is counted."""
    import ray

    handles = shard_handles()
    warm = requests("outage", 600, 40)
    asyncio.run(_send(fleet_http, warm[:40]))  # users the shards have loaded before the outage
    _, runner0 = wait_settled(fleet_http)
    emitted0 = emitted_in_region(fleet_http)

    async def load_for(seconds):
        out, i, end = [], 40, time.monotonic() + seconds
        while time.monotonic() < end and i < len(warm):
            out += await _send(fleet_http, warm[i:i + 20], concurrency=8)
            i += 20
        return out

    redis_server.stop()
    try:
        results = asyncio.run(load_for(10.0))
        during_ledger = stats(fleet_http)["ledger"]
    finally:
        redis_server.start()
    assert all(status in (200, 204) for _, status, _, _ in results)
    assert during_ledger["redis"] == "down" and during_ledger["buffered"] + during_ledger["spill_bytes"] > 0
    settled, runner = wait_settled(fleet_http, timeout=60)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        after = ray.get([h.stats.remote() for h in handles.values()])
        if all(s["pending"] == 0 and s["redis"] == "up" for s in after):
            break
        time.sleep(0.2)
    assert all(s["pending"] == 0 and s["dropped"] == 0 for s in after), after
    emitted = emitted_in_region(fleet_http) - emitted0
    # every event of the outage's traffic is in the ledger: a response per answered bid
    # request, a selected and a billed event per bid
    expected = []
    for req, status, _, body in results:
        if status == 200:
            expected.append(f"response:{REGION}:{req['id']}")
            for sb in json.loads(body)["seatbid"]:
                expected += [f"{kind}:{b['id']}" for b in sb["bid"] for kind in ("selected", "billed")]
    r = redis_server.client()
    missing = [e for e in expected if not r.exists(f"fleet:{REGION}:ledger:seen:{e}")]
    assert emitted >= len(expected) > 100 and missing == []
    # the runner processed them: applied now, or already claimed when an attempt whose reply
    # was lost (Redis ran the scripts, the client timed out) is read again
    if runner["pid"] == runner0["pid"]:
        processed = (runner["applied"] + runner["duplicates"]) - (runner0["applied"] + runner0["duplicates"])
        assert processed >= len(expected), (runner0, runner)
    wins = winners(results)
    assert len(wins) > 20
    assert missing_in_redis(redis_server, wins) == []


def test_a_slow_shard_turns_into_defaults_never_a_late_answer(fleet_http):
    import ray

    handles = shard_handles()
    before = stats(fleet_http)["bidder"]
    ray.get([h.set_delay.remote(0.3) for h in handles.values()])
    try:
        results = asyncio.run(_send(fleet_http, requests("slow", 40, 40), concurrency=8, bill=False))
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
