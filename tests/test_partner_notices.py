"""A partner's nurl/burl/lurl fired from the ledger's path (``fleet.ledger.partner_notices``):
a real redis-server, the real ledger consumer, and a real local HTTP server counting hits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest
import redis as redis_lib

from fleet.config import REPO_ROOT
from fleet.ledger.consumer import LedgerConsumer, ledger_prefix
from fleet.ledger.emitter import stream_key
from fleet.ledger.events import Event, encode
from fleet.ledger.partner_notices import PartnerNoticeSender, fill
from fleet.partners.messages import PartnerUrls

REGION = "us-east"
P = ledger_prefix(REGION)
RATES = {"USD": 1.0, "EUR": 1.08, "JPY": 0.0066}
MACROS = ("p=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}&a=${AUCTION_ID}&b=${AUCTION_BID_ID}&i=${AUCTION_IMP_ID}"
          "&s=${AUCTION_SEAT_ID}&l=${AUCTION_LOSS}")


class Partner:
    """A partner's notice endpoint: counts every hit. ``/ok`` answers 200, ``/down`` 503,
    ``/flaky/N`` 503 for the first N hits of a URL then 200, ``/gone`` 404, ``/hang`` answers
    after 3 s (past the sender's timeout)."""

    def __init__(self):
        self.hits: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    outer.hits.append(self.path)
                    seen = outer.hits.count(self.path)
                parts = urlsplit(self.path).path.strip("/").split("/")
                status = 200
                if parts[0] == "down":
                    status = 503
                elif parts[0] == "flaky" and seen <= int(parts[1]):
                    status = 503
                elif parts[0] == "gone":
                    status = 404
                elif parts[0] == "hang":
                    time.sleep(3.0)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the senders' concurrent calls: none refused for want of backlog

        self.server = Server(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(h.startswith(prefix) for h in self.hits)

    def queries(self, prefix: str) -> list[dict]:
        with self.lock:
            return [{k: v[0] for k, v in parse_qs(urlsplit(h).query, keep_blank_values=True).items()}
                    for h in self.hits if h.startswith(prefix)]


@pytest.fixture
def partner():
    p = Partner()
    yield p
    p.server.shutdown()


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t


def selected(bid: str, base: str, kind_paths=("ok", "ok", "ok"), price=2.0, cur="EUR", test=False,
             pbid: str = "", pseat: str = "") -> Event:
    n, b, l = kind_paths
    urls = PartnerUrls(nurl=f"{base}/{n}/win/{bid}?{MACROS}" if n else None,
                       burl=f"{base}/{b}/bill/{bid}?{MACROS}" if b else None,
                       lurl=f"{base}/{l}/loss/{bid}?{MACROS}" if l else None)
    return Event(f"selected:{bid}", "selected", time.time(), REGION, bid, f"auc-{bid}", "imp-1", "c1", "cr1",
                 price=2.5, user="u1", until=time.time() + 900, flag="test" if test else "",
                 partner="dsp-x", partner_urls=urls, partner_price=price, partner_cur=cur,
                 partner_bid=pbid, partner_seat=pseat)


def notice(kind: str, bid: str, price=1.5, reason=0, test=False) -> Event:
    return Event(f"{kind}:{bid}", kind, time.time(), REGION, bid, f"auc-{bid}", "imp-1", "", "", price=price,
                 reason=reason, bid_ts=time.time(), flag="test" if test else "")


def push(url: str, *entries: list[Event]) -> None:
    r = redis_lib.Redis.from_url(url)
    for evs in entries:
        r.xadd(stream_key(REGION), {"b": msgspec.msgpack.encode([encode(e) for e in evs])})


async def consume(url: str, name: str = "c0") -> LedgerConsumer:
    c = LedgerConsumer(REGION, url, consumer=name, expire_s=3600)
    await c.ensure_group()
    await c.drain(block_ms=50)
    return c


def sender(url: str, clock=time.time, **kw) -> PartnerNoticeSender:
    from fleet.cache.shard import redis_client

    return PartnerNoticeSender(redis_client(url, decode=False), P, RATES, clock=clock, timeout_s=1.0, **kw)


def run(coro):
    return asyncio.run(coro)


def test_a_partner_win_fires_each_url_once_with_its_macros_even_when_our_notices_are_resent(redis_srv, partner):
    push(redis_srv.url, [selected("b1", partner.base), notice("win", "b1"), notice("win", "b1")],
         [notice("win", "b1"), notice("billed", "b1"), selected("b1", partner.base)],  # resent, replayed
         [notice("billed", "b1"), notice("win", "b1")],
         [selected("b2", partner.base, pbid="their-b2", pseat="their-seat"),
          notice("lost", "b2", price=0.0, reason=102), notice("lost", "b2")],
         [Event("selected:b3", "selected", time.time(), REGION, "b3", "auc-b3", "imp-1", "c1", price=2.0),
          notice("win", "b3"), notice("billed", "b3")])  # our own bid: no partner, nothing to fire

    async def go():
        c = await consume(redis_srv.url)
        s = sender(redis_srv.url)
        assert await s.drain() == 3
        assert await s.drain() == 0
        await c.close()
        return c, s

    c, s = run(go())
    assert c.partner_queued == 3
    assert partner.count("/ok/win/b1") == 1 and partner.count("/ok/bill/b1") == 1
    assert partner.count("/ok/loss/b2") == 1 and len(partner.hits) == 3
    win = partner.queries("/ok/win/b1")[0]
    # The clearing price, 1.5 USD CPM, in the partner's EUR (1.5 / 1.08), below its 2.0 bid.
    assert float(win["p"]) == pytest.approx(1.5 / 1.08, abs=1e-6)
    assert win == {"p": win["p"], "cur": "EUR", "a": "auc-b1", "b": "b1", "i": "imp-1", "s": "", "l": "0"}
    loss = partner.queries("/ok/loss/b2")[0]
    assert loss["l"] == "102" and loss["p"] == ""  # nothing was charged on a loss
    assert (loss["b"], loss["s"]) == ("their-b2", "their-seat")  # the partner's own ids where known
    assert s.summary()["done"] == 3
    assert redis_lib.Redis.from_url(redis_srv.url).hget(P + "stats", "pn_queued") == b"3"


def test_the_price_is_never_above_the_partners_bid():
    from fleet.ledger.partner_notices import NoticeInfo, PartnerData, macro_values

    d = PartnerData(partner="x", urls={}, price=1.0, cur="JPY")  # a 1 JPY bid
    v = macro_values(d, NoticeInfo(kind="billed", price=0.5), RATES)  # cleared at 0.5 USD = 75 JPY
    assert v["AUCTION_PRICE"] == "1"
    assert isinstance(macro_values(PartnerData(partner="x", urls={}, price=1.0, cur="XXX"),
                                   NoticeInfo(kind="win", price=0.5), RATES), str)  # no rate: not filled
    assert fill("u?p=%24%7BAUCTION_PRICE%7D&q=${AUCTION_MBR}", {"AUCTION_PRICE": "1.5"}) == "u?p=1.5&q=${AUCTION_MBR}"


def test_a_notice_that_overtakes_its_selected_event_fires_once_it_arrives(redis_srv, partner):
    push(redis_srv.url, [notice("billed", "b1"), notice("win", "b1")])

    async def go():
        c = await consume(redis_srv.url)
        s = sender(redis_srv.url)
        assert await s.drain() == 0  # nothing known about the partner yet
        push(redis_srv.url, [selected("b1", partner.base)], [selected("b1", partner.base)])
        await c.drain(block_ms=50)
        assert await s.drain() == 2
        await c.close()

    run(go())
    assert partner.count("/ok/win/b1") == 1 and partner.count("/ok/bill/b1") == 1


def test_test_requests_fire_no_partner_notice(redis_srv, partner):
    push(redis_srv.url, [selected("t1", partner.base, test=True), notice("win", "t1", test=True),
                         notice("billed", "t1", test=True)])

    async def go():
        c = await consume(redis_srv.url)
        assert await sender(redis_srv.url).drain() == 0
        await c.close()

    run(go())
    assert partner.hits == []


def test_concurrent_consumers_and_senders_fire_every_url_exactly_once(redis_srv, partner):
    """Two consumers in the group read the stream at once (each notice sent three times, in
    different entries) and four senders drain the queue at once."""
    bids = [f"b{i}" for i in range(150)]
    entries = [[selected(b, partner.base) for b in bids]]
    for rep in range(3):
        entries += [[notice("win", b) for b in bids[rep::3]], [notice("billed", b) for b in bids],
                    [notice("win", b) for b in bids]]
    push(redis_srv.url, *entries)

    async def go():
        cs = [LedgerConsumer(REGION, redis_srv.url, consumer=n, expire_s=3600, batch=1) for n in ("c0", "c1")]
        await cs[0].ensure_group()
        await asyncio.gather(*[c.drain(block_ms=50) for c in cs])
        ss = [sender(redis_srv.url, batch=16) for _ in range(4)]
        await asyncio.gather(*[s.drain() for s in ss])
        for c in cs:
            await c.close()
        return cs, ss

    cs, ss = run(go())
    assert sum(c.partner_queued for c in cs) == 300
    assert sum(s.counts["done"] for s in ss) == 300 and not any(s.counts["retry"] for s in ss)
    assert len(partner.hits) == 300 and len(set(partner.hits)) == 300
    assert sum(1 for s in ss if s.counts["done"]) >= 2  # the work was shared, not serialized


def test_a_consumer_that_dies_before_acknowledging_loses_and_doubles_nothing(redis_srv, partner):
    """Killed after Redis ran its pipeline (queued) and before XACK: the entries stay pending,
    the restarted consumer applies them again, and the partner is called once."""
    push(redis_srv.url, [selected("b1", partner.base), notice("win", "b1"), notice("billed", "b1")])

    async def go():
        c = LedgerConsumer(REGION, redis_srv.url, expire_s=3600)
        await c.ensure_group()

        async def die(*a, **kw):
            raise ConnectionError("killed before XACK")
        c.redis.xack = die
        assert await c.step() == 0  # its own pending entries first: none
        with pytest.raises(ConnectionError):
            await c.step()
        await c.close()
        again = await consume(redis_srv.url)  # same consumer name: re-reads its pending entries
        assert again.duplicates == 3
        s = sender(redis_srv.url)
        assert await s.drain() == 2
        await again.close()

    run(go())
    assert partner.count("/ok/win/b1") == 1 and partner.count("/ok/bill/b1") == 1


def test_a_sender_that_dies_between_claim_and_call_never_fires_twice(redis_srv, partner):
    """At most once, on purpose: the claim is written before the call, so a job whose claim
    outlived its lease may have been called; it is settled ``unknown`` and dead-lettered with its
    URL, not called again. A sender that comes back after its lease finds its settle refused."""
    clock = Clock()
    push(redis_srv.url, [selected("b1", partner.base), selected("b2", partner.base),
                         notice("win", "b1"), notice("win", "b2")])

    async def go():
        c = await consume(redis_srv.url)
        clock.t = time.time()  # the queue's due times are the consumer's (real) clock
        first = sender(redis_srv.url, clock=clock, lease_s=30.0)
        claimed = await first._claim(keys=first.keys, args=[clock(), 10, "dead-owner", first.lease_s, 3600])
        assert len(claimed) == 2  # ... and the process dies here (b1), or stalls (b2)
        second = sender(redis_srv.url, clock=clock, lease_s=30.0)
        assert await second.drain() == 0  # claimed and within the lease: left alone
        clock.t += 31.0
        assert await second.drain() == 0
        m, claim, job, data = claimed[1]
        late = await first._fire(m.decode(), claim.decode(), job, data)  # the stalled one wakes up
        await c.close()
        return late

    late = run(go())
    assert late == "lost_lease"
    r = redis_lib.Redis.from_url(redis_srv.url)
    dead = [json.loads(x) for x in r.lrange(P + "pndead", 0, -1)]
    assert sorted((d[0], d[1]) for d in dead) == [("b1|win", "unknown"), ("b2|win", "unknown")]
    assert r.get(P + "pn:b1:win").startswith(b"unknown|")
    assert partner.count("/ok/win/b2") == 1 and partner.count("/ok/win/b1") == 0  # never twice, never re-fired
    assert r.hget(P + "stats", "pn_unknown") == b"2" and r.hget(P + "stats", "pn_outcome_after_lease") == b"1"


def test_a_consumer_sigkilled_mid_stream_and_restarted_queues_every_notice_once(redis_srv, partner):
    """The real thing: ``fleet ledger consume`` killed with SIGKILL a quarter of the way into a
    long stream (every notice three times), then run again to the end; then the senders."""
    bids = [f"k{i}" for i in range(400)]
    entries = []
    for i in range(0, len(bids), 20):
        chunk = bids[i:i + 20]
        entries += [[selected(b, partner.base) for b in chunk]]
        for _ in range(3):
            entries += [[notice("win", b) for b in chunk] + [notice("billed", b) for b in chunk]]
    push(redis_srv.url, *entries)
    r = redis_lib.Redis.from_url(redis_srv.url)
    env = {**os.environ, "REDIS_URL": redis_srv.url}
    cmd = [sys.executable, "-m", "fleet.cli", "ledger", "consume", "--region", REGION]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            groups = r.xinfo_groups(stream_key(REGION)) if r.exists(stream_key(REGION)) else []
            if groups and (groups[0]["entries-read"] or 0) > len(entries) // 4:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 0 < r.xinfo_groups(stream_key(REGION))[0]["entries-read"] < len(entries), "the kill should land mid-stream"
    subprocess.run(cmd + ["--until-idle"], env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)

    async def go():
        ss = [sender(redis_srv.url, batch=32) for _ in range(2)]
        await asyncio.gather(*[s.drain() for s in ss])
        return ss

    ss = run(go())
    assert sum(s.counts["done"] for s in ss) == 800 and r.hget(P + "stats", "pn_queued") == b"800"
    assert len(partner.hits) == 800 and len(set(partner.hits)) == 800


def test_failures_retry_with_backoff_then_dead_letter(redis_srv, partner):
    clock = Clock()
    paths = {"f": ("flaky/2", None, None), "d": ("down", None, None), "g": ("gone", None, None),
             "h": ("hang", None, None), "r": (None, None, None)}
    evs = [selected(b, partner.base, kind_paths=p) for b, p in paths.items()] + [notice("win", b) for b in paths]
    refused = selected("x", "http://127.0.0.1:1")  # nothing listens: not sent, so retried
    push(redis_srv.url, evs + [refused, notice("win", "x")])

    async def go():
        c = await consume(redis_srv.url)
        clock.t = time.time()
        s = sender(redis_srv.url, clock=clock, max_tries=4, backoff_s=(1.0, 60.0))
        await s.drain()
        for _ in range(6):
            clock.t += 61.0
            await s.drain()
        await c.close()
        return s

    s = run(go())
    assert partner.count("/flaky/2/win/f") == 3  # two 503s, then taken
    assert partner.count("/down/win/d") == 4  # max_tries, then dead
    assert partner.count("/gone/win/g") == 1  # a 404 is not retried
    assert partner.count("/hang/win/h") == 1  # sent, no answer in time: unknown, not re-sent
    assert s.counts == {"done": 1, "retry": 2 + 3 + 3, "dead": 3, "unknown": 1, "skipped": 1, "lost_lease": 0}
    r = redis_lib.Redis.from_url(redis_srv.url)
    dead = {d[0]: d for d in (json.loads(x) for x in r.lrange(P + "pndead", 0, -1))}
    assert set(dead) == {"d|win", "g|win", "h|win", "x|win"}
    assert dead["d|win"][1] == "dead" and "4 tries" in dead["d|win"][2]
    assert dead["h|win"][1] == "unknown" and dead["h|win"][4].startswith(partner.base + "/hang/win/h?p=")
    assert r.zcard(P + "pnq") == 0 and r.hlen(P + "pnj") == 0
    stats = {k.decode(): int(v) for k, v in r.hgetall(P + "stats").items() if k.startswith(b"pn_")}
    assert stats == {"pn_queued": 6, "pn_done": 1, "pn_retries": 8, "pn_dead": 3, "pn_unknown": 1, "pn_skipped": 1}


def test_a_partner_url_on_another_host_is_never_called(redis_srv, partner):
    """The URLs come from the partner's answer: one pointing elsewhere (our Redis, a metadata
    service) is dead-lettered without a call; its own host (or a sibling subdomain) is called."""
    from fleet.ledger.partner_notices import partners_host

    evil = selected("e1", partner.base.replace("127.0.0.1", "127.0.0.2"))  # the partner is on 127.0.0.1
    push(redis_srv.url, [evil, notice("win", "e1"), selected("g1", partner.base), notice("win", "g1")])

    async def go():
        c = await consume(redis_srv.url)
        s = sender(redis_srv.url, hosts={"dsp-x": "127.0.0.1"})
        await s.drain()
        await c.close()
        return s

    s = run(go())
    assert s.counts["done"] == 1 and s.counts["dead"] == 1
    assert partner.count("/ok/win/g1") == 1 and len(partner.hits) == 1
    dead = json.loads(redis_lib.Redis.from_url(redis_srv.url).lrange(P + "pndead", 0, -1)[0])
    assert dead[0] == "e1|win" and "host" in dead[2]
    assert partners_host("https://win.dsp.example/n?p=1", "bid.dsp.example")
    assert partners_host("https://dsp.example/n", "bid.dsp.example")
    assert not partners_host("https://dsp.example.evil.test/n", "bid.dsp.example")
    assert not partners_host("http://169.254.169.254/latest", "bid.dsp.example")
    assert not partners_host("http://10.0.0.5/x", "10.0.0.6") and partners_host("http://10.0.0.6:81/x", "10.0.0.6")
