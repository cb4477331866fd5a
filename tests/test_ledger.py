"""The ledger against a real redis-server: signed notices, idempotent spend, Redis outages with
spill and replay, a consumer killed mid-stream, expiry, reconciliation."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from urllib.parse import parse_qs

import pytest
import redis as redis_lib

from fleet.config import REPO_ROOT
from fleet.ledger.consumer import LedgerConsumer, ledger_prefix
from fleet.ledger.emitter import EventEmitter, stream_key
from fleet.ledger.events import Event, notice_event
from fleet.ledger.freq import FreqForwarder
from fleet.ledger.report import ledger_rows, report
from fleet.ledger.signing import NoticeSigner
from fleet.pipeline.notices import NoticeError, parse_notice
from fleet.harness.offline import bids_and_notices

REGION = "us-east"


def run(coro):
    return asyncio.run(coro)


# -- signing ------------------------------------------------------------------------------

def test_signature_binds_identity_and_expiry():
    clock = [1000.0]
    s = NoticeSigner({"k1": b"a" * 32}, ttl_s=60, clock=lambda: clock[0])
    q = s.sign({"bid": "b1", "c": "camp", "cr": "cr1", "r": REGION, "t": "1", "b": "2.5000"})
    s.verify(q)
    for field, value in (("c", "other"), ("b", "9.0000"), ("x", str(int(q["x"]) + 3600)), ("s", "AAAA")):
        with pytest.raises(Exception, match="signature"):
            s.verify({**q, field: value})
    clock[0] += 61
    with pytest.raises(Exception, match="expired"):
        s.verify(q)


def test_rotated_keys_still_verify_bids_already_out():
    old = NoticeSigner({"k1": b"a" * 32})
    q = old.sign({"bid": "b1", "c": "c", "cr": "cr", "r": REGION, "t": "1"})
    rotated = NoticeSigner({"k2": b"b" * 32, "k1": b"a" * 32})
    rotated.verify(q)
    assert rotated.sign({"bid": "b2"})["k"] == "k2"
    with pytest.raises(Exception, match="unknown key"):
        NoticeSigner({"k2": b"b" * 32}).verify(q)


# -- a run of bids and notices, in process --------------------------------------------------

def _exchange(rng, bid):
    """60% won; 90% of wins billed; clearing at 50-100% of the bid."""
    won = rng.random() < 0.6
    clear = round(bid["price"] * rng.uniform(0.5, 1.0), 4)
    if not won:
        return [("loss", clear)]
    return [("win", clear)] + ([("bill", clear)] if rng.random() < 0.9 else [])


def bid_run(n: int = 300, seed: int = 3, signer=None):
    """Bids from the in-process bidder and the notices an exchange would send for them:
    (bid-path events, [(kind, query)] notices, the signer)."""
    signer = signer or NoticeSigner({"k1": b"k" * 32})
    events, notices, _ = bids_and_notices(REGION, n, seed, signer, "lr", _exchange)
    return events, notices, signer


def notice_events(notices, signer) -> list[Event]:
    out = []
    for kind, query in notices:
        n = parse_notice(kind, query, REGION, signer)
        out.append(notice_event(kind, n, n.bid_ts_ms / 1000.0 + 1))
    return out


async def emit_and_consume(url: str, evs: list[Event], spill) -> LedgerConsumer:
    em = EventEmitter(REGION, url, spill)
    em.emit_many(evs)
    await em.close()
    c = LedgerConsumer(REGION, url, expire_s=3600)
    await c.ensure_group()
    await c.drain()
    await c.close()
    return c


def ledger_state(url: str) -> dict:
    r = redis_lib.Redis.from_url(url)
    p = ledger_prefix(REGION)
    out = {}
    for key in r.scan_iter(match=p + "agg:*"):
        out[key.decode()] = {k.decode(): round(float(v), 9) for k, v in r.hgetall(key).items()}
    for key in r.scan_iter(match=p + "spend:*"):
        out[key.decode()] = {k.decode(): round(float(v), 9) for k, v in r.hgetall(key).items()}
    return out


def test_every_notice_three_times_shuffled_gives_the_same_ledger(redis_srv, tmp_path):
    events, notices, signer = bid_run()
    assert sum(1 for k, _ in notices if k == "bill") > 20
    nev = notice_events(notices, signer)
    once_url = redis_srv.url.replace("/0", "/1")
    run(emit_and_consume(once_url, events + nev, tmp_path / "a.bin"))
    noisy = nev * 3
    random.Random(9).shuffle(noisy)
    c = run(emit_and_consume(redis_srv.url, events + noisy, tmp_path / "b.bin"))
    assert c.duplicates == 2 * len(nev)
    once, thrice = ledger_state(once_url), ledger_state(redis_srv.url)
    assert once and once == thrice
    rows = ledger_rows(redis_lib.Redis.from_url(redis_srv.url), REGION)
    assert sum(r.billed for r in rows) == sum(1 for k, _ in notices if k == "bill")
    assert sum(r.selected for r in rows) == sum(1 for e in events if e.kind == "selected")
    assert not any("billed>won" in r.flags for r in rows)


def test_forged_and_expired_notices_are_refused_and_create_no_spend(redis_srv, tmp_path):
    """Genuine bills, and forged, tampered and late ones, arrive in the same run: only what
    verifies reaches the ledger, and spend is exactly the genuine bills' sum (a refusal that let
    any of them through, or a ledger that dropped a genuine one, would change it)."""
    clock = [time.time()]
    signer = NoticeSigner({"k1": b"k" * 32}, ttl_s=60, clock=lambda: clock[0])
    events, notices, _ = bid_run(80, seed=4, signer=signer)
    bills = [i for i, (k, _) in enumerate(notices) if k == "bill"]
    assert len(bills) > 5
    late = notices[bills[-1]][1]  # a genuine bill that comes after its deadline
    tampered = notices[bills[0]][1].replace("bid=", "bid=x", 1)  # another bid id: a new event if let in
    forged = NoticeSigner({"k1": b"f" * 32}).sign(
        {"n": "bill", "bid": "zz", "c": "c-banner-global", "cr": "x", "r": REGION, "t": "1", "b": "9.0"})
    forged_q = "&".join(f"{k}={v}" for k, v in forged.items()) + "&px=5"
    admitted, refused = [], []

    def deliver(kind, q):  # what the notice endpoint does: parse (verify), then emit
        try:
            n = parse_notice(kind, q, REGION, signer)
        except NoticeError as err:
            refused.append(err)
            return
        admitted.append(notice_event(kind, n, clock[0]))

    for i, (kind, q) in enumerate(notices):
        if i != bills[-1]:
            deliver(kind, q)
            if i == len(notices) // 2:
                deliver("bill", tampered)
                deliver("bill", forged_q)
    clock[0] = int(parse_qs(late)["x"][0]) + 1
    deliver("bill", late)
    assert [e.status for e in refused] == [403, 403, 403] and refused[-1].reason == "expired"
    genuine = sum(float(parse_qs(notices[i][1])["px"][0]) for i in bills[:-1]) / 1000.0
    assert genuine > 0
    run(emit_and_consume(redis_srv.url, events + admitted, tmp_path / "s.bin"))
    rows = ledger_rows(redis_lib.Redis.from_url(redis_srv.url), REGION)
    assert sum(r.billed for r in rows) == len(bills) - 1
    assert sum(r.spend for r in rows) == pytest.approx(genuine, abs=1e-9)


# -- durability ---------------------------------------------------------------------------

def test_redis_outage_spills_and_replays_every_event_in_order(redis_srv, tmp_path):
    spill = tmp_path / "spill" / "r.bin"

    async def go():
        em = EventEmitter(REGION, redis_srv.url, spill, max_buffer=200, flush_s=0.01)
        evs = [Event(f"selected:b{i}", "selected", 1000.0 + i, REGION, f"b{i}", campaign="c", price=1.0)
               for i in range(3000)]
        em.emit_many(evs[:100])
        await em.flush()
        redis_srv.stop()
        for i in range(100, 3000, 50):
            em.emit_many(evs[i:i + 50])
            await em.flush()
        during = em.summary()
        redis_srv.start()
        for _ in range(100):
            await asyncio.sleep(0.05)
            await em.flush()
            if not em.buffer and not em.spilled():
                break
        after = em.summary()
        await em.close()
        return during, after

    during, after = run(go())
    assert during["redis"] == "down" and during["spill_bytes"] > 0 and during["buffered"] <= 200
    assert after["buffered"] == 0 and after["spill_bytes"] == 0 and after["replayed"] == during["spilled"]
    entries = redis_lib.Redis.from_url(redis_srv.url).xrange(stream_key(REGION))
    from fleet.ledger.events import decode

    import msgspec

    ids = [decode(raw).id for _, f in entries for raw in msgspec.msgpack.decode(f[b"b"])]
    assert ids == [f"selected:b{i}" for i in range(3000)]  # all of them, in emission order


def test_a_consumer_killed_mid_stream_loses_and_doubles_nothing(redis_srv, tmp_path):
    events, notices, signer = bid_run(600, seed=5)
    evs = events + notice_events(notices, signer)
    evs = evs * 20  # a long stream (duplicates included, as an exchange would send them)
    clean_url = redis_srv.url.replace("/0", "/2")
    run(emit_and_consume(clean_url, evs, tmp_path / "clean.bin"))

    async def emit():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "e.bin")
        em.emit_many(evs)
        await em.close()

    run(emit())
    env = {**os.environ, "REDIS_URL": redis_srv.url}
    cmd = [sys.executable, "-m", "fleet.cli", "ledger", "consume", "--region", REGION]
    r = redis_lib.Redis.from_url(redis_srv.url)
    entries = r.xlen(stream_key(REGION))  # stream entries (each holds many events)
    assert entries > 20
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            groups = r.xinfo_groups(stream_key(REGION)) if r.exists(stream_key(REGION)) else []
            read = groups[0]["entries-read"] if groups else 0
            if read and read > entries // 4:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    read_at_kill = r.xinfo_groups(stream_key(REGION))[0]
    assert 0 < read_at_kill["entries-read"] < entries, "the kill should land mid-stream"
    subprocess.run(cmd + ["--until-idle"], env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)
    assert ledger_state(redis_srv.url) == ledger_state(clean_url)
    assert r.xinfo_groups(stream_key(REGION))[0]["pending"] == 0


def test_a_reply_lost_after_redis_applied_counts_nothing_twice(redis_srv, tmp_path):
    """The consumer's pipeline runs in Redis but its reply is lost (a client timeout): the
    entries stay pending, are read again, and every event comes back as already claimed."""
    events, notices, signer = bid_run(200, seed=8)
    evs = events + notice_events(notices, signer)
    clean_url = redis_srv.url.replace("/0", "/4")
    clean = run(emit_and_consume(clean_url, evs, tmp_path / "clean.bin"))

    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "e.bin")
        em.emit_many(evs)
        await em.close()
        c = LedgerConsumer(REGION, redis_srv.url, expire_s=3600)
        real_pipeline, lost = c.redis.pipeline, []

        def pipeline(*a, **kw):
            pipe = real_pipeline(*a, **kw)
            execute = pipe.execute

            async def execute_and_lose_reply():
                out = await execute()
                if not lost:  # events in the lost reply (a script call answers a batch of them)
                    lost.append(sum(len(r) for r in out if isinstance(r, list)))
                    raise TimeoutError("reply lost")
                return out
            pipe.execute = execute_and_lose_reply
            return pipe

        c.redis.pipeline = pipeline
        stop = asyncio.Event()
        task = asyncio.create_task(c.run(stop))
        end = time.monotonic() + 30
        while (not lost or await c.lag() != 0) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await c.close()
        return c, lost[0]

    c, lost_events = run(go())
    assert c.failed_steps == 1 and lost_events > 0
    assert ledger_state(redis_srv.url) == ledger_state(clean_url)
    assert c.applied == clean.applied - lost_events
    # the lost attempt counted nothing; its redelivery counts every event once, as claimed
    assert c.applied + c.duplicates == clean.applied + clean.duplicates
    assert redis_lib.Redis.from_url(redis_srv.url).xinfo_groups(stream_key(REGION))[0]["pending"] == 0


def test_unanswered_bids_expire_and_release_their_reservation(redis_srv, tmp_path):
    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "x.bin")
        now = time.time()
        em.emit_many([Event("selected:e1", "selected", now, REGION, "e1", campaign="c1", price=2000.0),
                      Event("selected:e2", "selected", now, REGION, "e2", campaign="c1", price=1000.0),
                      Event("billed:e2", "billed", now, REGION, "e2", campaign="c1", price=800.0)])
        await em.close()
        c = LedgerConsumer(REGION, redis_srv.url, expire_s=0.2)
        await c.ensure_group()
        await c.drain(50)
        await asyncio.sleep(0.3)
        swept = await c.sweep()
        await c.sweep()  # nothing twice
        await c.close()
        return swept

    assert run(go()) == 1
    (row,) = ledger_rows(redis_lib.Redis.from_url(redis_srv.url), REGION)
    assert (row.selected, row.billed, row.expired) == (2, 1, 1)
    assert row.reserved == pytest.approx(3.0) and row.released == pytest.approx(3.0)
    assert row.spend == pytest.approx(0.8)


def test_report_flags_drift_between_pacing_and_ledger(redis_srv, tmp_path):
    now = time.time()

    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "d.bin")
        em.emit_many([Event(f"selected:d{i}", "selected", now, REGION, f"d{i}", campaign=c, price=1000.0)
                      for i, c in enumerate(["ok"] * 10 + ["drifty"] * 10)])
        await em.close()
        c = LedgerConsumer(REGION, redis_srv.url)
        await c.ensure_group()
        await c.drain(50)
        await c.close()

    run(go())
    r = redis_lib.Redis.from_url(redis_srv.url)
    r.hset(f"fleet:{REGION}:pacing:replica-a", mapping={"ok": 10.0, "drifty": 7.0})
    doc = report(r, REGION, tolerance=0.02)
    assert doc["today"]["ok"]["drift"] == 0 and not doc["today"]["ok"]["flag"]
    assert doc["today"]["drifty"]["flag"] and doc["flagged"] == ["drifty"]


def test_notices_that_overtake_their_bid_count_the_same(redis_srv, tmp_path):
    """A notice handled by another replica can reach the stream before its bid's selected
    event: totals, releases and the billed impressions for frequency come out the same."""
    events, notices, signer = bid_run(200, seed=6)
    nev = notice_events(notices, signer)
    billed = []

    async def consume(url, evs, spill):
        em = EventEmitter(REGION, url, spill)
        em.emit_many(evs)
        await em.close()

        async def on_billed(fe):
            billed.extend((f.user, f.cid, f.eid) for f in fe)

        c = LedgerConsumer(REGION, url, expire_s=3600)
        await c.ensure_group()
        await c.drain()
        await FreqForwarder(c.redis, REGION, on_billed).drain()  # the outbox, to the "shards"
        await c.close()

    def totals(url):
        out = {}
        for row in ledger_rows(redis_lib.Redis.from_url(url), REGION, window_s=86_400 * 30):
            t = out.setdefault(row.campaign, [0, 0, 0, 0.0, 0.0, 0.0])
            for i, v in enumerate((row.selected, row.won, row.billed, row.reserved, row.released, row.spend)):
                t[i] = round(t[i] + v, 6)
        return out

    run(consume(redis_srv.url.replace("/0", "/3"), events + nev, tmp_path / "in-order.bin"))
    in_order = sorted(billed)
    billed.clear()
    run(consume(redis_srv.url, nev + events, tmp_path / "overtaken.bin"))  # every notice first
    assert totals(redis_srv.url) == totals(redis_srv.url.replace("/0", "/3"))
    with_user = {e.bid for e in events if e.kind == "selected" and e.user}
    assert sorted(billed) == in_order
    assert len(in_order) == sum(1 for e in nev if e.kind == "billed" and e.bid in with_user) > 20


def test_ivt_reversal_takes_billed_spend_back_once(redis_srv, tmp_path):
    now = time.time()
    env = {**os.environ, "REDIS_URL": redis_srv.url}

    async def go():
        em = EventEmitter(REGION, redis_srv.url, tmp_path / "i.bin")
        em.emit_many([Event("selected:v1", "selected", now, REGION, "v1", campaign="c9", price=3000.0),
                      Event("billed:v1", "billed", now, REGION, "v1", campaign="c9", price=2500.0),
                      Event("selected:v2", "selected", now, REGION, "v2", campaign="c9", price=3000.0)])
        await em.close()

    run(go())
    cmd = [sys.executable, "-m", "fleet.cli", "ledger", "ivt", "--region", REGION, "--campaign", "c9", "v1", "v2"]
    for _ in range(2):  # run twice: reversed once
        subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=60)

    async def consume():
        c = LedgerConsumer(REGION, redis_srv.url)
        await c.ensure_group()
        await c.drain()
        await c.close()

    run(consume())
    rows = ledger_rows(redis_lib.Redis.from_url(redis_srv.url), REGION)
    assert sum(r.ivt for r in rows) == 1  # v2 was never billed: nothing to take back
    assert sum(r.spend for r in rows) == pytest.approx(0.0)
    day = int(now // 86_400)
    assert float(redis_lib.Redis.from_url(redis_srv.url).hget(f"{ledger_prefix(REGION)}spend:{day}", "c9")) == pytest.approx(0.0)
