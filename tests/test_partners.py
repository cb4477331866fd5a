"""Stage 6, demand partners, in-process with real local HTTP partner servers (no Ray).

The partner servers are ``fleet.sim.partners`` (aiohttp, each on its own port) and count what
they saw; the region is a real ``Region`` calling them through its pooled aiohttp clients. What is
asserted: bids are validated (every drop has its reason), a partner that hangs is cut at its
deadline (the answer leaves while the partner still hangs), garbage never breaks an answer, the
bidder's counts equal the servers', privacy holds on the wire, a winning partner bid carries its
markup under our notice URLs (theirs only on the ledger event), control's policy overrides the
defaults, and the tail throttle and error backoff engage.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import yaml

from fleet.config import REPO_ROOT, RegionAppArgs, RegionsFile
from fleet.openrtb.model import BidRequest
from fleet.partners.validate import Validator
from fleet.region.runtime import Region
from fleet.sim.partners import PartnerServers, Profile, region_entries

FIXTURES = Path(__file__).parent / "fixtures"
REGION = "us-east"
HEADERS = {"x-openrtb-version": "2.6"}


def _request(rid: str, **changes) -> bytes:
    req = copy.deepcopy(json.loads((FIXTURES / "requests" / "banner_site_us.json").read_text())["request"])
    req["id"] = rid
    req.update(changes)
    return json.dumps(req).encode()


def _config(entries: list[dict], **settings) -> RegionsFile:
    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    raw["regions"][REGION]["partners"] = entries
    raw.setdefault("defaults", {})["partners"] = settings
    return RegionsFile.model_validate(raw)


def _region(cfg: RegionsFile) -> Region:
    return Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=False, ledger=False),
                  config=cfg, replica="t1")


async def _with(profiles, body, n_settings: dict | None = None, cutoffs: dict | None = None):
    """Start ``profiles`` as servers, a region calling them, run ``body(region, servers)``."""
    servers = PartnerServers(profiles)
    await servers.start()
    entries = region_entries(servers, profiles)
    for e in entries:
        if cutoffs and e["id"] in cutoffs:
            e["cutoff_ms"] = cutoffs[e["id"]]
    region = _region(_config(entries, **(n_settings or {})))
    try:
        return await body(region, servers)
    finally:
        await region.stop()
        await servers.stop()


async def _settled(servers, region, timeout_s: float = 5.0) -> None:
    """Until every partner server has taken in what the region sent (a request on the wire may
    not have reached its handler yet when the answer left) and the region has counted every call
    cut at the deadline (counted once aiohttp's writer had its turn): the two sides agree, or the
    caller's assertions say how they differ."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        called = {pid: row["called"] for pid, row in region.stats()["partners"].items()}
        if all(servers.seen().get(pid, 0) == n for pid, n in called.items()):
            return
        await asyncio.sleep(0.02)


# -- validation (no servers) --------------------------------------------------------------

def _validator(**req_changes) -> Validator:
    req = json.loads(_request("v-1"))
    req["imp"][0]["pmp"] = {"private_auction": 0, "deals": [{"id": "d1", "bidfloor": 3.0, "wseat": ["ok-seat"]}]}
    req["imp"][0]["banner"]["battr"] = [6]
    req.update({"badv": ["bad.example"], "bcat": ["IAB25"], "bseat": ["blocked-seat"]}, **req_changes)
    r = msgspec.json.decode(json.dumps(req), type=BidRequest)
    return Validator(r, {"1": 0.1}, {"USD": 1.0, "EUR": 1.08})


def _answer(bids: list[dict], seat: str = "ok-seat", cur: str = "USD", rid: str = "v-1") -> bytes:
    return json.dumps({"id": rid, "cur": cur, "seatbid": [{"seat": seat, "bid": bids}]}).encode()


def _bid(**kw) -> dict:
    return {"id": "b", "impid": "1", "price": 2.0, "adm": "<div/>", "adomain": ["fine.example"], "crid": "cr", **kw}


@pytest.mark.parametrize("bid,seat,cur,reason", [
    (_bid(impid="9"), "ok-seat", "USD", "unknown_imp"),
    (_bid(price=-1.0), "ok-seat", "USD", "bad_price"),
    (_bid(price=1e300), "ok-seat", "USD", "implausible_price"),
    (_bid(price="2"), "ok-seat", "USD", "malformed_bid"),
    (_bid(), "ok-seat", "XXX", "unknown_currency"),
    (_bid(price=0.05), "ok-seat", "USD", "below_floor"),
    (_bid(adomain=["bad.example"]), "ok-seat", "USD", "blocked_adomain"),
    (_bid(cat=["IAB25"]), "ok-seat", "USD", "blocked_cat"),
    (_bid(attr=[6]), "ok-seat", "USD", "blocked_attr"),
    (_bid(), "blocked-seat", "USD", "seat_not_allowed"),
    (_bid(dealid="nope"), "ok-seat", "USD", "unknown_deal"),
    (_bid(dealid="d1", price=5.0), "other-seat", "USD", "deal_seat_not_allowed"),
    (_bid(dealid="d1", price=2.0), "ok-seat", "USD", "below_floor"),  # the deal's floor (3.0) applies
    (_bid(adm=None), "ok-seat", "USD", "no_adm"),
    (_bid(crid=None), "ok-seat", "USD", "no_crid"),  # our notice URLs name it: without it they would be refused
    (_bid(crid=""), "ok-seat", "USD", "no_crid"),
    (_bid(nurl="http://x/" + "a" * 5000), "ok-seat", "USD", "url_too_long"),
])
def test_a_bad_bid_is_dropped_and_counted_by_its_reason(bid, seat, cur, reason):
    drops = Counter()
    good = _bid(id="g", price=1.0)
    answer = {"id": "v-1", "cur": cur, "seatbid": [{"seat": seat, "bid": [bid]}, {"seat": "ok-seat", "bid": [good]}]}
    out = _validator().judge("p", "p", json.dumps(answer).encode(), drops)
    if reason in ("unknown_currency",):  # the answer's currency: no bid of it can be read
        assert out == [] and drops == Counter({reason: 2})
        return
    assert [b.bid.id for b in out] == ["g"] and drops == Counter({reason: 1})


def test_valid_bids_convert_their_currency_and_keep_deal_and_urls():
    drops = Counter()
    out = _validator().judge("p", "p", _answer([_bid(price=4.0, dealid="d1", nurl="http://p/win?x=${AUCTION_PRICE}")],
                                               cur="EUR"), drops)
    assert not drops and len(out) == 1
    b = out[0]
    assert b.price == pytest.approx(4.0 * 1.08) and (b.partner_price, b.partner_cur) == (4.0, "EUR")
    assert b.bid.dealid == "d1" and b.urls.nurl == "http://p/win?x=${AUCTION_PRICE}"


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"seatbid": 7}', b"\xff\xfe", b'{"id": 5}', b"null"])
def test_an_unreadable_answer_is_an_error_not_an_exception(body):
    drops = Counter()
    assert _validator().judge("p", "p", body, drops) is None
    assert drops == Counter({"malformed_response": 1})


def test_an_answer_for_another_request_is_dropped_whole():
    drops = Counter()
    assert _validator().judge("p", "p", _answer([_bid()], rid="other"), drops) == []
    assert drops == Counter({"wrong_request_id": 1})


# -- the request path, with real partner servers --------------------------------------------

def test_a_hanging_partner_is_cut_at_its_deadline_and_counted_late():
    profiles = [Profile("hang", latency_ms=1, hang_rate=1.0, hang_s=30.0), Profile("quick", latency_ms=1)]

    async def body(region, servers):
        a = await region.bid(_request("h-1"), HEADERS)
        # our own bid, not held by the partner (a 204 "deadline" only when this loaded box stalls
        # the process itself past the request's deadline)
        assert (a.status, a.reason) in ((200, ""), (204, "deadline"))
        # the answer left while the hanging partner's server still holds the request
        hang = next(sp for sp in servers.partners if sp.p.id == "hang")
        assert hang.seen.requests == 1 and hang.seen.by_outcome["hang"] == 1
        sent = hang.seen.recent[-1][1]
        st = region.stats()["partners"]
        assert st["hang"]["late"] == 1 and st["hang"]["in_time"] == 0 and st["quick"]["in_time"] == 1
        # what it was given is its cutoff (the budget had more): tmax on the wire, HTTP timeout alike
        assert sent["tmax"] == 25
        assert "partners" in a.spent

    asyncio.run(_with(profiles, body, cutoffs={"hang": {"remnant": 25.0}}))


def test_tmax_is_the_time_left_when_that_is_less_than_the_cutoff():
    profiles = [Profile("slowpoke", latency_ms=1, bid_rate=0.0)]

    async def body(region, servers):
        a = await region.bid(_request("t-1", tmax=40), HEADERS)  # 40 - 15 allowance = 25 ms budget
        sent = servers.partners[0].seen.recent[-1][1]
        assert a.status in (200, 204)
        assert 0 < sent["tmax"] <= 25 - region.partners.settings.reserve_ms

    asyncio.run(_with(profiles, body, cutoffs={"slowpoke": {"remnant": 60.0}}))


def test_a_call_cut_short_by_the_request_does_not_count_against_the_partners_tail():
    """Late within less than its cutoff (the request had less time left) is our shortfall, not
    the partner's tail: it is counted late, but the partner is neither judged slow nor throttled.
    The same partner given its whole cutoff is (test above)."""
    profiles = [Profile("hang", latency_ms=1, hang_rate=1.0, hang_s=5.0)]

    async def body(region, servers):
        for i in range(30):  # 40 ms tmax - 15 ms allowance leaves ~25 ms, under the 60 ms cutoff
            await region.bid(_request(f"short-{i}", tmax=40), HEADERS)
        await _settled(servers, region)
        st = region.stats()["partners"]["hang"]
        assert st["late"] == st["called"] > 5
        assert st["state"]["remnant"] != "slow" and not st["not_called"].get("throttled")
        assert region.partners.partners["hang"].health.p95_ms("remnant") is None

    asyncio.run(_with(profiles, body, n_settings={"min_samples": 5, "backoff_after": 1000},
                      cutoffs={"hang": {"remnant": 60.0}}))


def test_garbage_never_breaks_an_answer_and_every_call_is_accounted_for():
    profiles = [Profile("garbage", latency_ms=1, garbage_rate=1.0)]

    async def body(region, servers):
        for i in range(60):
            a = await region.bid(_request(f"g-{i}"), HEADERS)
            assert a.status in (200, 204), (a.status, a.reason)
            if a.status == 200:
                json.loads(a.body)
        await _settled(servers, region)
        st = region.stats()["partners"]["garbage"]
        assert st["eligible"] == 60 and st["called"] == servers.seen()["garbage"]
        assert st["called"] + sum(st["not_called"].values()) == 60  # (unsent/no_time only on a loaded box)
        assert st["called"] == st["in_time"] + st["late"] + st["errors"]
        assert st["errors"] > 0 and sum(st["dropped"].values()) > 0

    asyncio.run(_with(profiles, body, n_settings={"min_samples": 1000, "backoff_after": 1000}))


def test_counts_per_partner_equal_what_the_partner_servers_saw():
    profiles = [Profile("fast", latency_ms=1), Profile("medium", latency_ms=8),
                Profile("flaky", latency_ms=2, error_rate=0.4), Profile("hanging", latency_ms=2, hang_rate=0.3)]

    async def body(region, servers):
        for i in range(40):
            a = await region.bid(_request(f"c-{i}"), HEADERS)
            assert a.status in (200, 204)
        await _settled(servers, region)
        st = region.stats()["partners"]
        for pid, seen in servers.seen().items():
            row = st[pid]
            assert row["called"] == seen, (pid, row, seen)
            assert row["called"] == row["in_time"] + row["late"] + row["errors"]
            assert row["eligible"] == 40 and row["participating"] <= row["in_time"] and row["won"] <= row["participating"]
        assert st["flaky"]["errors"] > 0 and st["hanging"]["late"] > 0
        part = region.stats()["partner_participation"]
        assert sum(b["requests"] for b in part.values()) == 40

    asyncio.run(_with(profiles, body, n_settings={"min_samples": 1000, "backoff_after": 1000}))


def test_a_winning_partner_bid_carries_its_markup_under_our_notice_urls():
    profiles = [Profile("rich", latency_ms=1, bid_rate=1.0, price_scale=40.0, price_sigma=0.01)]

    async def body(region, servers):
        for i in range(5):  # a stall of this loaded box past the deadline makes a 204; try again
            a = await region.bid(_request(f"w-{i}"), HEADERS)
            if a.status == 200:
                break
        assert a.status == 200
        bid = json.loads(a.body)["seatbid"][0]["bid"][0]
        assert bid["adm"].startswith("<div data-partner='rich'>")
        base = region.bidder.base_url
        assert all(bid[k].startswith(base + "/notice/") for k in ("nurl", "burl", "lurl"))
        assert "partner.invalid" not in a.body.decode()
        sel = [ev for ev in a.ledger if ev.kind == "selected"]
        assert len(sel) == 1 and sel[0].partner == "rich" and sel[0].bid == bid["id"]
        assert sel[0].partner_urls.nurl.startswith("https://partner.invalid/rich/win")
        assert sel[0].partner_cur == "USD" and sel[0].partner_price > 0
        # the partner's own bid id and seat, for its ${AUCTION_BID_ID} and ${AUCTION_SEAT_ID}
        assert sel[0].partner_bid and sel[0].partner_bid != bid["id"] and sel[0].partner_seat
        assert not region.bidder.budget.reserved  # a partner's bid reserves none of our budget
        assert region.stats()["partners"]["rich"]["won"] == 1

    asyncio.run(_with(profiles, body))


def test_a_contextual_request_reaches_partners_without_user_ids():
    profiles = [Profile("p25", latency_ms=1, bid_rate=0.0)]

    async def body(region, servers):
        await region.bid(_request("x-1", regs={"coppa": 1}, device={"ip": "81.2.69.160", "ifa": "abc",
                                                                    "geo": {"country": "USA"}}), HEADERS)
        headers, sent = servers.partners[0].seen.recent[-1]
        assert "user" not in sent and "ifa" not in sent["device"] and "ip" not in sent["device"]
        assert sent["imp"][0]["bidfloorcur"] == "USD" and sent["cur"] == ["USD"]
        await region.bid(_request("x-2", user={"id": "u1"}), HEADERS)
        headers, sent = servers.partners[0].seen.recent[-1]
        assert sent["user"]["id"] == "u1"  # no privacy bar: user data may travel

    asyncio.run(_with(profiles, body))


def test_control_policy_overrides_the_defaults():
    profiles = [Profile("a", latency_ms=1, bid_rate=0.0), Profile("b", latency_ms=1, bid_rate=0.0)]

    async def body(region, servers):
        region.partners.apply_policy({"remnant": {"budgets": {}, "partners": {
            "a": {"cutoff_ms": 0.0, "share": 1.0}, "b": 12.0}}})
        await region.bid(_request("p-1"), HEADERS)
        st = region.stats()["partners"]
        assert st["a"]["called"] == 0 and st["a"]["not_called"] == {"policy_off": 1}
        assert servers.seen() == {"a": 0, "b": 1} and servers.partners[1].seen.recent[-1][1]["tmax"] == 12
        assert st["b"]["cutoff_ms"]["remnant"] == 12.0 and st["b"]["from_control"] == ["remnant"]

    asyncio.run(_with(profiles, body))


def test_a_slow_partner_is_throttled_and_an_erroring_one_backed_off():
    profiles = [Profile("late", latency_ms=1, hang_rate=1.0, hang_s=5.0),
                Profile("broken", latency_ms=1, error_rate=1.0)]

    async def body(region, servers):
        for i in range(60):
            await region.bid(_request(f"s-{i}"), HEADERS)
        await _settled(servers, region)
        st = region.stats()["partners"]
        assert st["late"]["state"]["remnant"] == "slow"
        assert st["late"]["not_called"].get("throttled", 0) > 0 and st["late"]["called"] < 60
        assert st["late"]["called"] == servers.seen()["late"]
        assert st["broken"]["not_called"].get("backoff", 0) > 0 and st["broken"]["called"] < 60

    asyncio.run(_with(profiles, body, n_settings={"min_samples": 5, "backoff_after": 2, "backoff_s": 5.0},
                      cutoffs={"late": {"remnant": 10.0}}))


def test_a_25_partner_in_another_currency_gets_gzip_its_currency_and_the_25_privacy_places():
    profiles = [Profile("euro", latency_ms=1, bid_rate=0.0, currency="EUR")]

    async def body(region, servers):
        await region.bid(_request("e-1", regs={"gdpr": 0, "us_privacy": "1---"}), HEADERS)
        headers, sent = servers.partners[0].seen.recent[-1]
        assert headers["Content-Encoding"] == "gzip" and headers["x-openrtb-version"] == "2.5"
        assert sent["cur"] == ["EUR"] and sent["imp"][0]["bidfloorcur"] == "EUR"
        assert sent["imp"][0]["bidfloor"] == pytest.approx(0.1 / 1.08, rel=1e-4)
        assert sent["regs"]["ext"] == {"gdpr": 0, "us_privacy": "1---"} and "gdpr" not in sent["regs"]

    async def go():
        servers = PartnerServers(profiles)
        await servers.start()
        entries = region_entries(servers, profiles)
        entries[0].update(openrtb="2.5", gzip=True)
        region = _region(_config(entries))
        try:
            await body(region, servers)
        finally:
            await region.stop()
            await servers.stop()

    asyncio.run(go())


def test_partner_counts_become_prometheus_metrics(monkeypatch):
    """``fleet_partner_requests{partner,tier,step}`` grows by what /stats' counters grew by."""
    import fleet.obs.metrics as om

    class Metric:
        def __init__(self, name, *_a, **_k):
            self.name, self.values = name, {}
            made[name] = self

        def inc(self, d, tags):
            key = tuple(sorted(tags.items()))
            self.values[key] = self.values.get(key, 0) + d

        def set(self, v, tags):
            self.values[tuple(sorted(tags.items()))] = v

    made: dict[str, Metric] = {}
    monkeypatch.setattr(om, "_ray_metrics", lambda: type("M", (), {"Counter": Metric, "Gauge": Metric}))
    m = om.RegionMetrics(REGION)
    row = {"tiers": {"remnant": {"eligible": 3, "called": 2, "in_time": 1, "late": 1, "participating": 1, "won": 1,
                                 "errors": 0}},
           "dropped": {"below_floor": 2}, "p95_ms": {"remnant": 25.0}, "state": {"remnant": "slow"}}
    m.export({}, {}, None, partners={"p": row})
    row["tiers"]["remnant"]["called"] = 5
    m.export({}, {}, None, partners={"p": row})
    steps = made["fleet_partner_requests"].values
    key = lambda step: (("partner", "p"), ("region", REGION), ("step", step), ("tier", "remnant"))  # noqa: E731
    assert steps[key("called")] == 5 and steps[key("won")] == 1 and key("errors") not in steps
    assert made["fleet_partner_bids_dropped"].values[(("partner", "p"), ("reason", "below_floor"), ("region", REGION))] == 2
    assert made["fleet_partner_throttled"].values[(("partner", "p"), ("region", REGION), ("tier", "remnant"))] == 1.0


def test_a_huge_or_gzip_bombed_answer_is_an_error_read_no_further():
    """A partner answering 64 MiB of zeros gzipped (64 KiB on the wire) costs an error, not memory."""
    import gzip

    from aiohttp import web

    bomb = gzip.compress(b"0" * (64 << 20), compresslevel=9)

    async def handler(_req):
        return web.Response(body=bomb, headers={"content-encoding": "gzip", "content-type": "application/json"})

    async def go():
        app = web.Application()
        app.router.add_post("/openrtb2/bid", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        region = _region(_config([{"id": "bomb", "endpoint": f"http://127.0.0.1:{port}/openrtb2/bid",
                                   "cutoff_ms": {"remnant": 500.0}}]))
        try:
            a = await region.bid(_request("bomb-1"), HEADERS)
            assert a.status in (200, 204)
            st = region.stats()["partners"]["bomb"]
            assert st["errors"] == 1 and st["error_kinds"] == {"too_large": 1}
        finally:
            await region.stop()
            await runner.cleanup()

    asyncio.run(go())


def test_the_report_to_control_carries_partner_totals_and_its_push_sets_their_policy():
    """Contract items 1 and 2, in the region: ``Report.partners`` holds the replica's counts so
    far (cumulative, so control counts a report sent again once); a pushed tier policy's
    ``partners`` entries become the cutoffs in force."""
    from fleet.control.messages import Push

    sent = []  # what the region's own sync loop reported meanwhile

    class Link:
        async def sync(self, report):
            sent.append(report.partners)
            return Push(epoch=1, ts=0.0)

        async def watch(self, epoch, wait_s):
            await asyncio.Event().wait()

    profiles = [Profile("r1", latency_ms=1, bid_rate=1.0)]

    async def go():
        servers = PartnerServers(profiles)
        await servers.start()
        region = Region(RegionAppArgs(region=REGION, cache=False, telemetry=False, control=True, ledger=False),
                        config=_config(region_entries(servers, profiles)), replica="t1", link=Link())
        try:
            for i in range(3):
                await region.bid(_request(f"rep-{i}"), HEADERS)
            last = region.control.report().partners["r1"]["remnant"]
            total = [getattr(last, k) for k in ("eligible", "called", "in_time", "late", "errors")]
            assert total[:2] == [3, 3] and sum(total[2:]) == 3
            assert last.cutoff_ms == 30.0 and last.p95_ms is not None
            assert region.control.report().partners["r1"]["remnant"] == last  # totals: the same again
            assert all(r["r1"]["remnant"].called <= 3 for r in sent if "r1" in r)  # never more than so far
            await region.control.apply(Push(epoch=2, ts=0.0, policy_epoch=1, policy={
                "remnant": {"budgets": dict(region.bidder.tiers["remnant"].budgets),
                            "partners": {"r1": {"cutoff_ms": 12.0, "share": 1.0, "pinned": True}}}}))
            await region.bid(_request("rep-9"), HEADERS)
            assert servers.partners[0].seen.recent[-1][1]["tmax"] == 12
            assert region.partners.cutoff("r1", "remnant").pinned  # control's entry, not the default
        finally:
            await region.stop()
            await servers.stop()

    asyncio.run(go())
