"""Money truth in the ledger, against a real redis-server: the consumer never waits on the cache
shards, the expiry sweep keeps up, spend counts on the bid's day, bills after losses, unpriced
bills and test requests are told apart, the caught-up mark, IVT from the bid's own record, and a
report that compares like with like."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import redis as redis_lib

from fleet.config import REPO_ROOT
from fleet.ledger.consumer import SWEEP_BATCH, LedgerConsumer, ledger_prefix, outbox_key
from fleet.ledger.emitter import EventEmitter, stream_key
from fleet.ledger.events import Event
from fleet.ledger.freq import FreqForwarder
from fleet.ledger.report import ledger_rows, report

REGION = "us-east"
P = ledger_prefix(REGION)
DAY = 86_400


def run(coro):
    return asyncio.run(coro)


async def emit(url: str, evs: list[Event], spill, per_entry: int = 256) -> None:
    em = EventEmitter(REGION, url, spill, per_entry=per_entry)
    em.emit_many(evs)
    await em.close()


async def consume(url: str, expire_s: float = 3600, keep_open: bool = False, **kw) -> LedgerConsumer:
    c = LedgerConsumer(REGION, url, expire_s=expire_s, **kw)
    await c.ensure_group()
    await c.drain(50)
    if not keep_open:
        await c.close()
    return c


def sel(bid: str, ts: float, campaign: str = "c1", price: float = 2000.0, user: str = "", until: float = 0.0,
        flag: str = "") -> Event:
    return Event(f"selected:{bid}", "selected", ts, REGION, bid, f"a-{bid}", "1", campaign, price=price, user=user,
                 bid_ts=ts, until=until, flag=flag)


def note(kind: str, bid: str, ts: float, campaign: str = "c1", price: float = 1000.0, bid_ts: float = 0.0,
         flag: str = "") -> Event:
    return Event(f"{kind}:{bid}", kind, ts, REGION, bid, f"a-{bid}", "1", campaign, price=price, bid_ts=bid_ts, flag=flag)


def day_spend(r, day: int) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(f"{P}spend:{day}").items()}


# -- 1. the ledger never waits on the cache ----------------------------------------------------

def test_a_refusing_shard_never_stops_the_ledger_and_gets_every_impression_later(redis_srv, tmp_path):
    now = time.time()
    evs = []
    for i in range(300):
        evs += [sel(f"o{i}", now, user=f"u{i}", until=now + 900), note("billed", f"o{i}", now + 1, bid_ts=now)]
    evs += [note("billed", f"o{i}", now + 2, bid_ts=now) for i in range(50)]  # resent bills
    r = redis_lib.Redis.from_url(redis_srv.url)
    healthy, delivered, calls = [False], [], [0]

    async def on_billed(batch):
        calls[0] += 1
        if not healthy[0]:
            raise RuntimeError("shard refuses: pending queue full")
        delivered.extend(batch)

    async def go():
        await emit(redis_srv.url, evs, tmp_path / "o.bin", per_entry=16)
        c = LedgerConsumer(REGION, redis_srv.url, expire_s=3600)
        fwd = FreqForwarder(c.redis, REGION, on_billed, batch=64, idle_s=0.01, backoff_s=(0.01, 0.05))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)), asyncio.create_task(fwd.run(stop))]
        end = time.monotonic() + 30
        while (c.applied + c.duplicates < len(evs) or await c.lag() != 0 or fwd.failures < 3) \
                and time.monotonic() < end:
            await asyncio.sleep(0.02)
        # the shards refused every call, and the ledger is complete and acknowledged all the same
        mid = {"applied": c.applied, "duplicates": c.duplicates, "lag": await c.lag(),
               "failures": fwd.failures, "outbox": await fwd.backlog(), "delivered": len(delivered),
               "pending": r.xinfo_groups(stream_key(REGION))[0]["pending"], "spend": day_spend(r, int(now // DAY))}
        healthy[0] = True
        while await fwd.backlog() != 0 and time.monotonic() < end:
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        await c.close()
        return mid

    mid = run(go())
    assert mid["applied"] == 600 and mid["duplicates"] == 50
    assert mid["lag"] == 0 and mid["pending"] == 0 and mid["failures"] >= 3 and mid["delivered"] == 0
    assert mid["spend"] == {"c1": pytest.approx(300.0)}
    assert mid["outbox"] == 300  # one impression per bill, the resends added none
    # then the shards answer: the outbox drains to them, every impression at least once
    assert r.llen(outbox_key(REGION)) == 0
    got = {(f.user, f.cid, f.eid) for f in delivered}
    assert got == {(f"u{i}", "c1", f"a-o{i}:1") for i in range(300)}
    assert len(delivered) == 300 and int(r.hget(P + "stats", "freq_forwarded")) == 300


def test_the_outbox_is_capped_and_the_forwarder_removes_only_what_it_delivered(redis_srv, tmp_path):
    """The cap drops the oldest while a batch is with the shards: the forwarder then removes
    only its delivered entries still there, never newer undelivered ones."""
    now = time.time()
    first = [e for i in range(100) for e in (sel(f"f{i}", now, user=f"u{i}"), note("billed", f"f{i}", now))]
    more = [e for i in range(100, 130) for e in (sel(f"f{i}", now, user=f"u{i}"), note("billed", f"f{i}", now))]
    r = redis_lib.Redis.from_url(redis_srv.url)

    async def go():
        await emit(redis_srv.url, first, tmp_path / "a.bin")
        c = await consume(redis_srv.url, keep_open=True, outbox_cap=100)
        await emit(redis_srv.url, more, tmp_path / "b.bin")
        taken = []

        async def on_billed(batch):  # while the shards hold the batch, 30 more bills come in
            taken.extend(batch)
            await c.drain(50)

        await FreqForwarder(c.redis, REGION, on_billed, batch=80).step()
        await c.close()
        return taken

    taken = run(go())
    assert [f.user for f in taken] == [f"u{i}" for i in range(80)]
    left = [json.loads(x)[0] for x in r.lrange(outbox_key(REGION), 0, -1)]
    # 130 impressions, the oldest 30 dropped by the cap, 80 taken of which 50 still there removed
    assert left == [f"u{i}" for i in range(80, 130)]
    assert int(r.hget(P + "stats", "freq_dropped")) == 30


# -- 2. the expiry sweep keeps up --------------------------------------------------------------

def test_one_sweep_expires_thousands_of_due_bids_each_at_its_own_deadline(redis_srv, tmp_path):
    now = time.time()
    due = [sel(f"d{i}", now - 30, price=1000.0, until=now - 1) for i in range(3000)]
    keep = [sel("late-deadline", now - 5000, until=now + 600),  # ts + expire_s is past: its deadline is not
            sel("no-deadline", now - 30)]  # no until: open for expire_s from ts
    r = redis_lib.Redis.from_url(redis_srv.url)

    async def go():
        await emit(redis_srv.url, due + keep, tmp_path / "s.bin")
        c = await consume(redis_srv.url, expire_s=900, keep_open=True)
        n = await c.sweep()
        again = await c.sweep()
        await c.close()
        return n, again

    n, again = run(go())
    assert 3000 > SWEEP_BATCH and n == 3000 and again == 0
    assert sorted(m.decode() for m in r.zrange(P + "open", 0, -1)) == ["late-deadline", "no-deadline"]
    rows = ledger_rows(r, REGION, window_s=DAY * 30)
    assert sum(x.expired for x in rows) == 3000
    assert sum(x.released for x in rows) == pytest.approx(3000 * 1.0)
    assert sum(x.reserved for x in rows) == pytest.approx(3000 * 1.0 + 2 * 2.0)


# -- 3. spend by the bid's day; billed after lost; unpriced; test --------------------------------

def test_a_bill_after_midnight_counts_on_its_bids_day(redis_srv, tmp_path):
    d = int(time.time() // DAY) - 1
    bid_t = d * DAY + DAY - 1  # 23:59:59
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [sel("m1", bid_t), note("billed", "m1", (d + 1) * DAY + 5, price=1500.0, bid_ts=bid_t),
                             # a notice without the bid's time: the bid's record says the day
                             sel("m2", bid_t), note("billed", "m2", (d + 1) * DAY + 6, price=500.0)],
             tmp_path / "m.bin"))
    run(consume(redis_srv.url))
    assert day_spend(r, d) == {"c1": pytest.approx(2.0)}
    assert day_spend(r, d + 1) == {}
    assert r.hget(P + "bid:m1", "bday") == str(d).encode()


def test_a_bill_for_a_bid_closed_as_lost_still_counts_and_is_flagged(redis_srv, tmp_path):
    now = time.time()
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [sel("l1", now), note("lost", "l1", now + 1, price=0.0),
                             note("billed", "l1", now + 2, price=900.0, bid_ts=now)], tmp_path / "l.bin"))
    run(consume(redis_srv.url))
    (row,) = ledger_rows(r, REGION, window_s=DAY)
    assert (row.lost, row.billed, row.billed_after_lost) == (1, 1, 1)
    assert row.spend == pytest.approx(0.9) and "billed_after_lost" in row.flags
    assert day_spend(r, int(now // DAY)) == {"c1": pytest.approx(0.9)}
    assert report(r, REGION, window_s=DAY)["flagged"] == ["c1"]


def test_an_unpriced_bill_counts_at_its_price_and_is_flagged_for_reconciliation(redis_srv, tmp_path):
    now = time.time()
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [sel("u1", now, campaign="c2"), note("win", "u1", now + 1, "c2", 2000.0, now, "unpriced"),
                             note("billed", "u1", now + 1, "c2", 2000.0, now, "unpriced"),
                             sel("u2", now, campaign="c2"), note("billed", "u2", now + 1, "c2", 700.0, now)],
             tmp_path / "u.bin"))
    run(consume(redis_srv.url))
    (row,) = ledger_rows(r, REGION, window_s=DAY)
    assert (row.billed, row.unpriced) == (2, 1) and "unpriced" in row.flags
    assert row.spend == pytest.approx(2.7)


def test_a_test_request_creates_no_money(redis_srv, tmp_path):
    now = time.time()
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [sel("t1", now, user="u1", until=now - 1, flag="test"),
                             note("win", "t1", now + 1, bid_ts=now, flag="test"),
                             note("billed", "t1", now + 1, bid_ts=now, flag="test"),
                             note("billed", "t2", now + 1, bid_ts=now, flag="unpriced,test")], tmp_path / "t.bin"))

    async def go():
        c = await consume(redis_srv.url, keep_open=True)
        swept = await c.sweep()
        await c.close()
        return swept

    assert run(go()) == 0
    (row,) = ledger_rows(r, REGION, window_s=DAY)
    assert row.test == 4
    assert (row.selected, row.won, row.billed, row.unpriced, row.reserved, row.spend) == (0, 0, 0, 0, 0.0, 0.0)
    assert r.zcard(P + "open") == 0 and not r.exists(P + "bid:t1") and not r.exists(P + "bid:t2")
    assert day_spend(r, int(now // DAY)) == {} and r.llen(outbox_key(REGION)) == 0


# -- 4. the caught-up mark ---------------------------------------------------------------------

def test_caught_up_marks_the_start_of_a_read_that_drained_the_stream(redis_srv, tmp_path):
    ticks = iter(range(1000, 2000))
    r = redis_lib.Redis.from_url(redis_srv.url)
    now = time.time()

    def mark():
        v = r.get(P + "caught_up")
        return None if v is None else float(v)

    async def go():
        await emit(redis_srv.url, [sel(f"k{i}", now) for i in range(5)], tmp_path / "k.bin", per_entry=1)
        c = LedgerConsumer(REGION, redis_srv.url, batch=2, clock=lambda: float(next(ticks)))
        await c.ensure_group()
        seen = []
        # a failing apply: the entries stay pending, no mark
        real = c._apply

        async def broken(entries):
            raise ConnectionError("Redis away")
        c._apply = broken
        assert await c.step() == 0  # the (empty) backlog; then new entries
        with pytest.raises(ConnectionError):
            await c.step(10)  # started at 1001
        c._backlog = True  # what run() does after a failure
        c._apply = real
        seen.append(mark())
        for _ in range(6):
            await c.step(10)
            seen.append(mark())
        await c.close()
        return seen

    seen = run(go())
    # 1002: backlog read of the 2 pending; 1003: backlog empty; 1004: 2 new (a full batch);
    # 1005: the last 1, fewer than asked: caught up as of 1005; 1006, 1007: empty reads
    assert seen == [None, None, None, None, 1005.0, 1006.0, 1007.0]
    assert sum(x.selected for x in ledger_rows(r, REGION, window_s=DAY)) == 5


def test_every_event_in_the_stream_before_the_mark_is_applied(redis_srv, tmp_path):
    r = redis_lib.Redis.from_url(redis_srv.url)
    now = time.time()

    async def go():
        c = LedgerConsumer(REGION, redis_srv.url)
        stop = asyncio.Event()
        task = asyncio.create_task(c.run(stop))
        checks = []
        for round_ in range(5):
            await emit(redis_srv.url, [sel(f"r{round_}-{i}", now) for i in range(400)], tmp_path / f"{round_}.bin")
            emitted = time.time()
            end = time.monotonic() + 10
            while float(r.get(P + "caught_up") or 0) < emitted and time.monotonic() < end:
                await asyncio.sleep(0.005)
            assert float(r.get(P + "caught_up") or 0) >= emitted, "no caught-up mark"
            checks.append(sum(x.selected for x in ledger_rows(r, REGION, window_s=DAY)))
        stop.set()
        await task
        await c.close()
        return checks

    assert run(go()) == [400, 800, 1200, 1600, 2000]


# -- 5. IVT from the bid's own record ----------------------------------------------------------

def test_ivt_reverses_the_bids_own_campaign_and_day_whatever_the_report_says(redis_srv, tmp_path):
    d = int(time.time() // DAY) - 1  # billed yesterday, reversed today
    bid_t = d * DAY + 3600
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [sel("v1", bid_t, campaign="c9"), note("billed", "v1", bid_t + 1, "c9", 2500.0, bid_t),
                             sel("v2", bid_t, campaign="c9"), note("billed", "v2", bid_t + 1, "c9", 1000.0, bid_t),
                             sel("v3", bid_t, campaign="other"),
                             note("billed", "v3", bid_t + 1, "other", 400.0, bid_t)], tmp_path / "v.bin"))
    run(consume(redis_srv.url))
    assert day_spend(r, d) == {"c9": pytest.approx(3.5), "other": pytest.approx(0.4)}
    env = {**os.environ, "REDIS_URL": redis_srv.url}
    cli = [sys.executable, "-m", "fleet.cli", "ledger", "ivt", "--region", REGION]
    outs = [subprocess.run(cli + args, env=env, cwd=REPO_ROOT, check=True, capture_output=True, text=True,
                           timeout=60).stdout
            for args in (["--campaign", "other", "v1"], ["--campaign", "other", "v1"], ["v2"])]
    assert "under campaign c9, not other" in outs[0]
    run(consume(redis_srv.url))
    assert day_spend(r, d) == {"c9": pytest.approx(0.0), "other": pytest.approx(0.4)}
    assert day_spend(r, d + 1) == {}
    rows = ledger_rows(r, REGION, window_s=DAY * 30)
    assert {x.campaign: x.ivt for x in rows if x.ivt} == {"c9": 2}


def test_an_ivt_run_before_the_bill_is_counted_reverses_it_when_run_again(redis_srv, tmp_path):
    now = time.time()
    r = redis_lib.Redis.from_url(redis_srv.url)
    run(emit(redis_srv.url, [Event("ivt:w1", "ivt", now, REGION, "w1")], tmp_path / "w0.bin"))
    run(consume(redis_srv.url))
    run(emit(redis_srv.url, [sel("w1", now), note("billed", "w1", now + 1, price=800.0, bid_ts=now),
                             Event("ivt:w1", "ivt", now + 2, REGION, "w1"),
                             Event("ivt:w1", "ivt", now + 3, REGION, "w1")], tmp_path / "w1.bin"))
    run(consume(redis_srv.url))
    assert day_spend(r, int(now // DAY)) == {"c1": pytest.approx(0.0)}
    assert sum(x.ivt for x in ledger_rows(r, REGION, window_s=DAY)) == 1


# -- 6. the report compares like with like ------------------------------------------------------

def _control_region(url, tmp_path, now):
    """Bids of today for c1 and c2, some billed; one bill today for yesterday's bid."""
    y = now - DAY
    evs = [sel(f"p{i}", now, campaign=c, price=2000.0) for i, c in enumerate(["c1"] * 6 + ["c2"] * 6)]
    evs += [note(k, f"p{i}", now + 1, "c1" if i < 6 else "c2", 1000.0, now) for i in (0, 1, 2, 6, 7) for k in ("win", "billed")]
    evs += [sel("old", y, campaign="c1"), note("win", "old", now, "c1", 1000.0, y), note("billed", "old", now, "c1", 1000.0, y)]
    run(emit(url, evs, tmp_path / "p.bin"))
    run(consume(url))


def test_a_control_region_whose_billed_view_matches_the_ledger_is_not_flagged(redis_srv, tmp_path):
    now = time.time()
    _control_region(redis_srv.url, tmp_path, now)
    r = redis_lib.Redis.from_url(redis_srv.url)
    r.hset(f"fleet:{REGION}:pacing:a", mapping={"_kind": "billed", "c1": 2.0, "c2": 1.0})
    r.hset(f"fleet:{REGION}:pacing:b", mapping={"_kind": "billed", "c1": 1.0, "c2": 1.0})
    doc = report(r, REGION, tolerance=0.02, day_start=now // DAY * DAY)
    assert doc["today"]["c1"]["views"] == {"billed": {"pacing": 3.0, "ledger": 3.0, "drift": 0.0, "flag": False}}
    assert doc["today"]["c2"]["views"]["billed"]["ledger"] == pytest.approx(2.0)
    assert doc["flagged"] == []


def test_a_control_region_whose_billed_view_drifts_is_flagged(redis_srv, tmp_path):
    now = time.time()
    _control_region(redis_srv.url, tmp_path, now)
    r = redis_lib.Redis.from_url(redis_srv.url)
    # c1's replica still counts yesterday's bid billed today (4.0): drift from the ledger's 3.0
    r.hset(f"fleet:{REGION}:pacing:a", mapping={"_kind": "billed", "c1": 4.0, "c2": 2.0})
    doc = report(r, REGION, tolerance=0.02, day_start=now // DAY * DAY)
    assert doc["today"]["c1"]["flag"] and not doc["today"]["c2"]["flag"]
    assert doc["flagged"] == ["c1"]


def test_reserved_views_with_or_without_kind_compare_with_reservations(redis_srv, tmp_path):
    now = time.time()
    _control_region(redis_srv.url, tmp_path, now)
    r = redis_lib.Redis.from_url(redis_srv.url)
    r.hset(f"fleet:{REGION}:pacing:old", mapping={"c1": 6.0, "c2": 12.0})  # an older replica, no _kind
    r.hset(f"fleet:{REGION}:pacing:new", mapping={"_kind": "reserved", "c1": 6.0})
    doc = report(r, REGION, tolerance=0.02, day_start=now // DAY * DAY)
    assert doc["today"]["c1"]["views"] == {"reserved": {"pacing": 12.0, "ledger": 12.0, "drift": 0.0, "flag": False}}
    assert doc["today"]["c2"]["views"]["reserved"]["drift"] == 0.0 and doc["flagged"] == []
