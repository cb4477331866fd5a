"""Cache shards in-process against a real redis-server: write-through, read-through, Redis
outages, bounded pending writes, idempotent replays, batched lookups, slow shards, features."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time

import pytest

from fleet.cache.client import CacheClient
from fleet.cache.ring import HashRing
from fleet.cache.shard import Shard
from fleet.cache.store import FreqEvent, Profile


def run(coro):
    return asyncio.run(coro)


T0 = time.time() - 3600  # inside the frequency window


def ev(user, n, cid="c1", ts=T0):
    return FreqEvent(user, cid, f"a{n}:1", ts + n, ("seg-a",))


# -- consistent hashing ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4, 8])
def test_adding_a_shard_moves_about_one_in_n_plus_one_keys(n):
    keys = [f"u{i}" for i in range(20_000)]
    ring = HashRing([f"s{i}" for i in range(n)])
    before = {k: ring.owner(k) for k in keys}
    ring.add(f"s{n}")
    moved = [k for k in keys if ring.owner(k) != before[k]]
    share = len(moved) / len(keys)
    assert abs(share - 1 / (n + 1)) < 0.35 / (n + 1), share
    assert all(ring.owner(k) == f"s{n}" for k in moved)  # keys only move to the new shard
    ring.remove(f"s{n}")
    assert all(ring.owner(k) == before[k] for k in keys)  # and come back when it goes


def test_keys_spread_over_shards():
    ring = HashRing(["a", "b", "c", "d"])
    counts = {s: 0 for s in ring.shards}
    for i in range(40_000):
        counts[ring.owner(f"k{i}")] += 1
    assert max(counts.values()) / min(counts.values()) < 1.35


# -- write-through and read-through ---------------------------------------------------------

def test_acknowledged_writes_survive_a_new_shard(redis_srv):
    async def go():
        s1 = Shard("r", "s0", redis_srv.url)
        res = await s1.record([ev("u1", i) for i in range(5)])
        assert res == {"acked": True, "pending": 0, "dropped": 0}
        await s1.close()
        s2 = Shard("r", "s0", redis_srv.url)  # a restarted shard: empty memory
        assert await s2.lookup(["u1"]) == [None]  # a miss, filled in the background
        for _ in range(50):
            await asyncio.sleep(0.02)
            (p,) = await s2.lookup(["u1"])
            if p is not None:
                break
        await s2.close()
        return p

    p = run(go())
    assert p is not None
    assert {eid for eid, _ in p.freq["c1"]} == {f"a{i}:1" for i in range(5)}
    assert p.segments == ("seg-a",) and p.seen == T0 + 4


def test_replayed_events_count_once(redis_srv):
    async def go():
        s = Shard("r", "s0", redis_srv.url)
        await s.record([ev("u1", 1), ev("u1", 2)])
        await s.record([ev("u1", 1), ev("u1", 2), ev("u1", 3)])  # a resend after a lost ack
        await s.close()

    run(go())
    assert redis_srv.client().zcard("fleet:r:f:u1") == 3


def test_redis_outage_queues_writes_and_flushes_them_in_order(redis_srv):
    async def go():
        s = Shard("r", "s0", redis_srv.url)
        s.start()
        assert (await s.record([ev("u1", 0)]))["acked"]
        await s.lookup([f"u{k}" for k in range(7)])  # users this shard has loaded
        await asyncio.sleep(0.1)
        redis_srv.stop()
        results = []
        for i in range(1, 201):
            results.append(await s.record([ev(f"u{i % 7}", i)]))
        # decisions still see every count of a loaded user while Redis is away
        (p,) = await s.lookup(["u1"])
        assert len(p.freq["c1"]) == 1 + len([i for i in range(1, 201) if i % 7 == 1])
        assert not any(r["acked"] for r in results)
        assert s.stats()["pending"] == 200 and s.stats()["redis"] == "down"
        redis_srv.start()
        for _ in range(100):  # the flush loop notices Redis is back
            await asyncio.sleep(0.05)
            if not s.queue:
                break
        stats = s.stats()
        await s.close()
        return stats

    stats = run(go())
    assert stats["pending"] == 0 and stats["redis"] == "up" and stats["dropped"] == 0
    r = redis_srv.client()
    total = sum(r.zcard(f"fleet:r:f:u{k}") for k in range(7))
    assert total == 201  # every write queued during the outage is there
    # in order: the profile's last-seen is the last event's time, not an earlier one's
    assert float(r.hget("fleet:r:u:u4", "seen")) == T0 + max(i for i in range(201) if i % 7 == 4)


def test_pending_bound_is_reported_not_silent(redis_srv, caplog):
    async def go():
        s = Shard("r", "s0", redis_srv.url, max_pending=10)
        redis_srv.stop()
        out = [await s.record([ev("u1", i)]) for i in range(15)]
        stats = s.stats()
        await s.close()
        return out, stats

    with caplog.at_level(logging.ERROR, logger="fleet.cache"):
        out, stats = run(go())
    assert stats["pending"] == 10 and stats["dropped"] == 5
    assert sum(r["dropped"] for r in out) == 5
    assert "pending queue full" in caplog.text


# -- the ingress client ---------------------------------------------------------------------

def test_concurrent_lookups_share_one_call_per_shard(redis_srv):
    async def go():
        shards = {f"s{i}": Shard("r", f"s{i}", redis_srv.url, shards=["s0", "s1"]) for i in range(2)}
        client = CacheClient(shards, window_s=0.002)
        users = [f"user{i}" for i in range(40)]
        first = await asyncio.gather(*(client.lookup(u, 1.0) for u in users))
        calls = sum(s.counts["lookups"] for s in shards.values())
        await asyncio.sleep(0.1)  # the misses fill in the background
        second = await asyncio.gather(*(client.lookup(u, 1.0) for u in users))
        for s in shards.values():
            await s.close()
        return first, second, calls, shards

    first, second, calls, shards = run(go())
    assert calls == 2  # 40 keys, 2 shards: one call each
    assert {o for _, o in first} == {"miss"}
    assert {o for _, o in second} == {"hit"}
    assert sum(s.counts["keys"] for s in shards.values()) == 80


def test_a_slow_shard_becomes_defaults_within_the_budget(redis_srv):
    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        shard.delay_s = 0.5
        client = CacheClient({"s0": shard})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await client.lookup("u1", 0.005)
        waited = loop.time() - t0
        await shard.close()
        return out, waited

    (profile, outcome), waited = run(go())
    assert profile is None and outcome == "timeout"
    assert waited < 0.25  # bounded by the budget, not by the shard's half second


class Clock:
    """A hand-moved clock for the ingress's near-cache (the shards keep real time)."""

    def __init__(self):
        self.t = 1_000.0

    def __call__(self):
        return self.t


def settled(coro):
    """The value of a coroutine that must finish without suspending: a near-cache hit may not
    cost the request an event-loop pass."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the lookup suspended")


async def _loaded(client, user):
    """Look ``user`` up until its shard has read it through (the first sight is a miss)."""
    for _ in range(100):
        p, outcome = await client.lookup(user, 1.0)
        if outcome == "hit":
            return p
        await asyncio.sleep(0.01)
    raise AssertionError(f"{user} never loaded")


def test_near_cache_answers_a_known_user_in_process_without_a_shard_call(redis_srv):
    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        await shard.record([ev("nu1", i) for i in range(3)])
        clock = Clock()
        client = CacheClient({"s0": shard}, near_ttl_s=30.0, near_refresh_s=1.0, clock=clock)
        first = await _loaded(client, "nu1")
        keys = shard.counts["keys"]
        clock.t += 0.5  # fresher than near_refresh_s: no re-read either
        again = [settled(client.lookup("nu1", 1.0)) for _ in range(5)]
        await asyncio.sleep(0.02)
        await shard.close()
        return first, again, keys, shard.counts["keys"], client.summary()

    first, again, keys_before, keys_after, summary = run(go())
    assert all(outcome == "hit" and p == first for p, outcome in again)
    assert keys_after == keys_before  # the shard was not asked
    assert summary["near_hit"] == 5 and summary["near_users"] == 1
    assert summary.get("near_refresh", 0) == 0


def test_near_cache_serves_its_copy_then_refreshes_it_in_the_background(redis_srv):
    """Another replica's exposures reach this replica's copy at the next re-read: the request
    that starts the re-read gets the old copy at once, the next one the new."""

    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        await shard.record([ev("nu2", 0)])
        clock = Clock()
        mine = CacheClient({"s0": shard}, near_ttl_s=30.0, near_refresh_s=1.0, clock=clock)
        other = CacheClient({"s0": shard})  # another ingress replica, no near-cache
        await _loaded(mine, "nu2")
        await other.record_now([ev("nu2", 1), ev("nu2", 2)])
        clock.t += 2.0  # past near_refresh_s, inside the TTL
        stale, outcome = settled(mine.lookup("nu2", 1.0))
        for _ in range(100):  # the re-read answers on a later loop turn
            await asyncio.sleep(0.005)
            if mine.stats["near_refresh"] and not mine._refreshing:
                break
        fresh, outcome2 = settled(mine.lookup("nu2", 1.0))
        clock.t += 31.0  # past the TTL: the shard is asked again, and the request waits for it
        keys = shard.counts["keys"]
        _, outcome3 = await mine.lookup("nu2", 1.0)
        await shard.close()
        return stale, outcome, fresh, outcome2, outcome3, shard.counts["keys"] - keys, mine.stats

    stale, outcome, fresh, outcome2, outcome3, asked, stats = run(go())
    assert outcome == outcome2 == outcome3 == "hit"
    assert len(stale.freq["c1"]) == 1 and len(fresh.freq["c1"]) == 3
    assert stats["near_refresh"] == 1 and stats["near_expired"] == 1 and asked == 1


def test_near_cache_re_reads_go_to_their_shard_together(redis_srv):
    """At a high request rate nearly every near-cache hit is past near_refresh_s: the re-reads
    of many users gather and reach the shard as one lookup, not one message each."""

    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        clock = Clock()
        client = CacheClient({"s0": shard}, near_ttl_s=30.0, near_refresh_s=1.0, clock=clock)
        users = [f"rb{i}" for i in range(20)]
        for u in users:
            await shard.record([ev(u, 0)])
            await _loaded(client, u)
        calls, keys = shard.counts["lookups"], shard.counts["keys"]
        clock.t += 2.0
        served = []
        for u in users:  # requests on loop turns of their own, each starting its re-read
            served.append(settled(client.lookup(u, 1.0))[1])
            await asyncio.sleep(0)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not client._refreshing:
                break
        await shard.close()
        return served, shard.counts["lookups"] - calls, shard.counts["keys"] - keys, client.stats

    served, calls, keys, stats = run(go())
    assert served == ["hit"] * 20 and stats["near_refresh"] == 20
    assert keys == 20 and calls == 1


def test_near_cache_is_bounded_and_keeps_serving_while_its_shard_is_slow(redis_srv):
    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        clock = Clock()
        client = CacheClient({"s0": shard}, near_ttl_s=30.0, near_refresh_s=1.0, near_max_users=3,
                             near_refresh_timeout_s=0.05, clock=clock)
        for i in range(5):
            await shard.record([ev(f"nb{i}", 0)])
            await _loaded(client, f"nb{i}")
        kept = list(client.near)
        shard.delay_s = 0.5
        clock.t += 2.0
        served = settled(client.lookup("nb4", 0.005))  # at once, while its re-read waits on the shard
        await asyncio.sleep(0.1)
        cold = await client.lookup("nb0", 0.005)  # evicted: it waits for the shard, within budget
        await shard.close()
        return kept, served, cold, client.stats, client.near

    kept, served, cold, stats, near = run(go())
    assert kept == ["nb2", "nb3", "nb4"]  # the least recently fetched went first
    assert served[1] == "hit"
    assert cold == (None, "timeout")
    assert stats["near_refresh_failed"] == 1 and "nb4" in near  # a failed re-read keeps the copy


class Profiles:
    """An in-process shard answering every user with a profile of 20 campaigns."""

    async def lookup(self, users):
        return [Profile(("s1",), T0, {f"c{i}": ((f"{u}-{i}", T0),) for i in range(20)}, 0.0)
                for u in users]


def test_near_cache_holds_thousands_of_users_without_giving_the_collector_more_to_walk():
    """Full collections walk every container a process holds; a near-cache of live profiles
    made the ingress's slower by milliseconds. Held packed, its entries add none."""

    async def go():
        client = CacheClient({"s0": Profiles()}, near_ttl_s=30.0, clock=Clock())
        for i in range(0, 2_000, 100):
            await asyncio.gather(*(client.lookup(f"g{j}", 1.0) for j in range(i, i + 100)))
        p, outcome = settled(client.lookup("g7", 1.0))
        summary = client.summary()
        await asyncio.sleep(0.01)  # the loop lets go of the last batch's answers
        gc.collect()
        held = len(gc.get_objects())
        client.near.clear()
        gc.collect()
        return held - len(gc.get_objects()), p, outcome, summary

    grown, p, outcome, summary = run(go())
    assert summary["near_users"] == 2_000
    assert grown < 200  # live Profiles would add at least one tracked object per user
    assert outcome == "hit" and p.freq["c3"] == (("g7-3", T0),)


def test_writes_through_the_client_are_retried_after_a_failure(redis_srv):
    class Flaky:
        """A shard that refuses its first call, as one restarting would."""

        def __init__(self, inner):
            self.inner, self.failed = inner, False

        async def record(self, events):
            if not self.failed:
                self.failed = True
                raise ConnectionError("shard restarting")
            return await self.inner.record(events)

    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        client = CacheClient({"s0": Flaky(shard)}, flush_s=0.001)
        client.record([ev("u9", i) for i in range(20)])
        for _ in range(100):
            await asyncio.sleep(0.02)
            if client.stats["acked"] == 20:
                break
        await shard.close()
        return client.stats

    stats = run(go())
    assert stats["write_retry"] == 20 and stats["acked"] == 20
    assert redis_srv.client().zcard("fleet:r:f:u9") == 20


def test_publisher_features_and_daypart_come_from_redis(redis_srv):
    async def go():
        s = Shard("r", "s0", redis_srv.url)
        rng = random.Random(1)
        items = [("pub-1", True, 2.0) for _ in range(30)] + [("pub-1", False, None) for _ in range(10)]
        rng.shuffle(items)
        await s.publisher(items)
        await s.traffic({5: 30, 17: 90})
        fresh = Shard("r", "s0", redis_srv.url)  # another shard process reads the same truth
        await fresh.refresh()
        snap = fresh.snapshot()
        await s.close()
        await fresh.close()
        return snap

    snap = run(go())
    rate, level = snap["publishers"]["pub-1"]
    assert level == pytest.approx(2.0)
    assert rate == pytest.approx(31 / 44)  # smoothed toward 1/4
    assert snap["daypart"][17] == pytest.approx(24 * 90 / 120)
    assert snap["daypart"][3] == 0.0


# -- the hot-path socket --------------------------------------------------------------------

def test_wire_round_trip_and_reconnect_after_a_shard_restart(redis_srv):
    from fleet.cache import wire

    async def go():
        shard = Shard("r", "s0", redis_srv.url)
        server = await wire.serve(shard)
        addr = {"now": server.sockets[0].getsockname()[:2]}

        async def resolve():
            return addr["now"]

        client = wire.WireClient(resolve, retry_s=0.0)
        assert (await client.record([ev("w1", i) for i in range(3)]))["acked"]
        await client.lookup(["w1"])
        await asyncio.sleep(0.1)
        (p,) = await client.lookup(["w1"])
        # the shard goes away: calls fail fast (the caller defaults), nothing hangs
        server.close()
        await server.wait_closed()
        client.close()
        with pytest.raises(ConnectionError):
            await client.lookup(["w1"])
        # it comes back elsewhere, empty: the client re-resolves and the data reads through
        shard2 = Shard("r", "s0", redis_srv.url)
        server2 = await wire.serve(shard2)
        addr["now"] = server2.sockets[0].getsockname()[:2]
        await client.lookup(["w1"])
        await asyncio.sleep(0.1)
        (p2,) = await client.lookup(["w1"])
        client.close()
        server2.close()
        await shard.close()
        await shard2.close()
        return p, p2

    p, p2 = run(go())
    assert p.freq == p2.freq and len(p.freq["c1"]) == 3
    assert p2.segments == ("seg-a",)


def test_wire_callback_lookups_connect_first_then_answer_from_the_reader_and_fail_on_loss():
    from fleet.cache import wire

    async def go():
        shard = Shard("r", "s0", None)
        await shard.record([ev("cb1", 1)])
        await shard.lookup(["cb1"])  # a first lookup misses and fills in the background
        await asyncio.sleep(0.1)
        server = await wire.serve(shard)
        addr = server.sockets[0].getsockname()[:2]

        async def resolve():
            return addr

        client = wire.WireClient(resolve, retry_s=0.0)
        loop = asyncio.get_running_loop()
        answers: list = []
        first = loop.create_future()
        client.lookup_start(["cb1", "nobody"], first.set_result)  # not connected: connects first
        answers.append(await first)
        second = loop.create_future()
        client.lookup_start(["cb1"], second.set_result)  # connected: sent at once
        assert client._live() is not None and len(client._live().pending) == 1
        answers.append(await second)
        # the shard is slowed, the connection drops with the answer outstanding: the caller
        # hears of it (a ConnectionError), it is not left waiting
        shard.delay_s = 5.0
        third = loop.create_future()
        client.lookup_start(["cb1"], third.set_result)
        client.close()
        lost = await asyncio.wait_for(third, 2)
        server.close()
        await shard.close()
        return answers, lost

    (a1, a2), lost = run(go())
    assert a1[0].freq["c1"] and a1[1] is None and a2[0].freq == a1[0].freq
    assert isinstance(lost, ConnectionError)


def test_a_shard_that_never_resolves_fails_its_callers_and_frees_them():
    """Found in review: the connect had no bound, and every call (each callback lookup in a task
    of its own) waited behind its lock for as long as the address or the connect hung. Now each
    caller hears a ConnectionError, and the next connect is tried again."""
    from fleet.cache import wire

    hang = asyncio.Event()
    tries = []

    async def resolve():
        tries.append(1)
        await hang.wait()  # a shard's address that never comes
        return ("127.0.0.1", 9)

    async def go():
        client = wire.WireClient(resolve, retry_s=0.0, connect_s=0.05)
        loop = asyncio.get_running_loop()
        waiting = [loop.create_future() for _ in range(5)]
        for f in waiting:
            client.lookup_start(["u"], f.set_result)
        done, pending = await asyncio.wait(waiting, timeout=30)
        return [f.result() for f in done], len(pending)

    results, pending = run(go())
    assert pending == 0 and len(results) == 5
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert len(tries) >= 2  # tried again after the first gave up, not stuck behind it


def _mute_shard(answers: set[str]):
    """A shard's socket that reads every call and answers only the methods in ``answers`` (an
    empty set: a frozen process, its kernel still accepting and acknowledging)."""
    from fleet.cache import wire

    class Mute(wire._Frames):
        def message(self, msg):
            rid, method, _ = msg
            if method in answers:
                self.transport.write(wire._frame((rid, True, [None])))

    return Mute


def test_a_shard_silent_on_an_open_connection_fails_its_callers_and_is_reconnected():
    """Left alone last session: a shard that stops answering while its connection stays open
    kept every call waiting for ever (each a pending entry). Now the callers hear a
    ConnectionError once nothing has been heard for ``stall_s``, and the next call connects
    afresh (here to a shard that answers)."""
    from fleet.cache import wire

    async def go():
        loop = asyncio.get_running_loop()
        frozen = await loop.create_server(_mute_shard(set()), "127.0.0.1", 0)
        alive = await loop.create_server(_mute_shard({"lookup"}), "127.0.0.1", 0)
        addr = {"now": frozen.sockets[0].getsockname()[:2]}

        async def resolve():
            return addr["now"]

        client = wire.WireClient(resolve, retry_s=0.0, stall_s=0.2)
        waiting = [loop.create_future() for _ in range(5)]
        for f in waiting:
            client.lookup_start(["u"], f.set_result)
        called = asyncio.create_task(client.lookup(["u"]))
        done, pending = await asyncio.wait([*waiting, called], timeout=30)
        stuck = client._conn.pending if client._conn else {}
        addr["now"] = alive.sockets[0].getsockname()[:2]
        after = await asyncio.wait_for(client.lookup(["u"]), 30)
        client.close()
        frozen.close()
        alive.close()
        return [f.result() for f in waiting], called.exception(), len(pending), dict(stuck), after

    results, called, pending, stuck, after = run(go())
    assert pending == 0 and stuck == {}
    assert all(isinstance(r, ConnectionError) for r in results) and isinstance(called, ConnectionError)
    assert after == [None]


def test_a_silent_shard_is_cut_even_when_every_caller_gives_up_first():
    """Found in review: callers that stop waiting (``wait_for``) take their calls out of
    ``pending``, and each new call restarted the watch's clock, so a frozen shard was never cut.
    Sends that no frame followed count now, whoever still waits."""
    from fleet.cache import wire

    accepted = []

    class Frozen(wire._Frames):
        def connection_made(self, transport):
            super().connection_made(transport)
            accepted.append(transport)

        def message(self, msg):
            pass

    async def go():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Frozen, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()[:2]

        async def resolve():
            return addr

        client = wire.WireClient(resolve, retry_s=0.0, stall_s=0.2)
        gave_up = 0
        for _ in range(40):  # ~2.4 s, twelve times stall_s, a call every ~60 ms, each given up
            try:
                await asyncio.wait_for(client.lookup(["u"]), 0.05)
            except (TimeoutError, ConnectionError):
                gave_up += 1
            await asyncio.sleep(0.01)
        client.close()
        server.close()
        return gave_up, len(accepted)

    gave_up, connections = run(go())
    assert gave_up == 40 and connections >= 2  # cut, and connected afresh


def test_a_slow_call_is_not_cut_while_the_shard_still_answers_others():
    """A write waiting on the shard (a record behind a slow Redis) stays waiting while lookups on
    the same connection are answered; only when the connection falls silent is it cut."""
    from fleet.cache import wire

    async def go():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_mute_shard({"lookup"}), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()[:2]

        async def resolve():
            return addr

        client = wire.WireClient(resolve, retry_s=0.0, stall_s=0.5)
        record = asyncio.create_task(client.record([ev("s1", 1)]))
        answered = 0
        for _ in range(30):  # 1.5 s, three times stall_s, a lookup every 0.05 s
            await client.lookup(["u"])
            answered += 1
            await asyncio.sleep(0.05)
        still_waiting = not record.done()
        await asyncio.wait([record], timeout=30)  # no more lookups: silent now
        client.close()
        server.close()
        return answered, still_waiting, record.exception()

    answered, still_waiting, exc = run(go())
    assert answered == 30 and still_waiting
    assert isinstance(exc, ConnectionError)


def test_wire_frames_are_cut_out_of_any_chunking_and_bad_input_closes_the_connection():
    from fleet.cache import wire

    class Transport:
        closed = False

        def close(self):
            self.closed = True

    class Collect(wire._Frames):
        def __init__(self):
            super().__init__()
            self.got = []
            self.transport = Transport()

        def message(self, msg):
            self.got.append(msg)

    stream = b"".join(wire._frame([i, "lookup", [f"u{i}"] * i]) for i in range(5))
    for cut in (1, 3, 4, 7, len(stream)):  # frames split anywhere, several in one chunk
        c = Collect()
        for k in range(0, len(stream), cut):
            c.data_received(stream[k:k + cut])
        assert c.got == [[i, "lookup", [f"u{i}"] * i] for i in range(5)] and not c.buf
    oversize = Collect()
    oversize.data_received(wire._len.pack(wire.MAX_FRAME + 1))
    garbage = Collect()
    garbage.data_received(wire._len.pack(3) + b"\xc1\xc1\xc1")  # 0xc1: never valid msgpack
    assert oversize.transport.closed and garbage.transport.closed and not garbage.got


def test_shard_reports_its_event_loop_lag_while_it_serves_and_rests_while_idle():
    """Lookups are answered on the shard's loop: its lag is in the shard's stats (the ingress's
    /cache shows it per shard) to tell a busy shard from a slow network. A shard nobody asks
    (an idle region's) samples no more than once a second: no 50 wake-ups a second for nothing."""
    async def run():
        s = Shard("t", "s0", None)
        s.start()
        for _ in range(25):  # serving: the monitor samples every 20 ms
            s.lookup_now(["u1"])
            await asyncio.sleep(0.01)
        busy = sum(s.stats()["loop_lag"]["loop_lag"])
        await asyncio.sleep(1.1)  # a second without lookups makes it idle
        settled = sum(s.stats()["loop_lag"]["loop_lag"])
        await asyncio.sleep(0.5)  # idle
        idle = sum(s.stats()["loop_lag"]["loop_lag"]) - settled
        await s.close()
        return busy, idle

    busy, idle = asyncio.run(run())
    assert busy >= 5
    assert idle == 0
