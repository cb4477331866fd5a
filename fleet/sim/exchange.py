"""The simulated exchanges: open-loop traffic over HTTP, auctions decided by the market, notices.

A separate process from the fleet (it is the ``fleet sim run`` command) that talks to it only over
HTTP. Exchanges sit in regions and send to a region's endpoint, mostly their own; the round trip
between them (``regions.yaml``'s latency matrix) is added as simulated network time against tmax,
so a far exchange with a tight tmax gets late answers, which count as no-bids. An exchange waits
for a bid request until its tmax plus a small margin (``SimConfig.timeout_margin_ms``), then gives
up: a timeout, not answered in time. Given a DNS (``fleet.sim.dns``, as the global Terraform
module configures Route 53), an auction meant for a region that failed its health checks goes to
the healthy region nearest the exchange instead; given an ejector (``fleet.sim.ejection``), a
region that failed three auctions in a row (a timeout is a failure) is skipped for the next
nearest within a second or two, long before the DNS moves it. A failed auction is not resent to
another region (an exchange does not retry a bid request). Traffic follows a diurnal curve
compressed into the run, with bursts, at a set mean rate.

After each auction the exchange behaves like a real one: win notice (``nurl``) and billing notice
(``burl``, once the ad renders) with ``${AUCTION_PRICE}`` and friends substituted, a loss notice
(``lurl``) with the loss reason and the price to beat, and a click notice drawn from the true
click probability. Some notices are dropped, some duplicated, some sent late, at set rates
(``fleet.sim.notices``, this class's base).

For the money bench (``fleet bench notices``) it misbehaves the way real exchanges do, at set
rates: a notice resent several times, bills delayed by minutes, forged and kind-swapped notices
(a loss URL called as a bill; a bid raised in a signed URL), an exchange that asks for JPY and
leaves ``${AUCTION_CURRENCY}`` unsubstituted, and retries of a notice whose call failed (as after
a replica was killed). Its ground truth, ``billed``, is what it charged: each bid billed once,
in USD, counted when the fleet acknowledged the bill.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import msgspec

from fleet.campaigns.model import Campaign
from fleet.sim.dns import DNS, health_checks
from fleet.sim.ejection import Ejector, probes
from fleet.sim.market import Market, Opportunity, resolve
from fleet.sim.notices import NoticeQueue, substitute


@dataclass
class SimConfig:
    base_url: str = "http://127.0.0.1:8000"
    duration_s: float = 180.0
    rate: float = 60.0  # mean auctions per second over all regions
    seed: int = 7
    drop_rate: float = 0.05  # notices never sent
    dup_rate: float = 0.05  # notices sent twice
    late_rate: float = 0.05  # notices sent late, by late_min_s to late_max_s
    late_min_s: float = 2.0
    late_max_s: float = 10.0
    render_rate: float = 0.97  # won impressions that render (and bill)
    burst_every_s: float = 45.0  # mean time between traffic bursts
    burst_len_s: float = 6.0
    burst_factor: float = 2.0
    diurnal_amplitude: float = 0.6
    grace_s: float = 12.0  # time after the last auction for late notices
    cross_region_share: float = 0.1  # auctions from an exchange in another region (far away)
    concurrency: int = 256
    # A bid request is waited for until its own tmax plus this, then given up (a timeout: not
    # answered in time), as a real exchange stops waiting at its tmax (``Exchanges.wait_s``).
    timeout_margin_ms: float = 50.0
    # The money bench's faults (all off by default)
    resend_rate: float = 0.0  # notices sent resend_copies extra times
    resend_copies: int = 3
    bill_delay_rate: float = 0.0  # bills delayed by bill_delay_min_s..max_s
    bill_delay_min_s: float = 60.0
    bill_delay_max_s: float = 900.0
    forge_rate: float = 0.0  # per bill: a kind-swapped loss URL and a tampered bill beside it
    jpy_share: float = 0.0  # auctions from an exchange trading in JPY, currency macro left as is
    notice_retries: int = 0  # a notice whose call failed (transport, 5xx) is sent again
    # imp.exp: the seconds the exchange says it may take from auction to impression (its bills
    # come within them). A compressed day compresses it too: the fleet holds a bid's reservation
    # until then, and 15 real minutes would outlast the whole compressed day.
    imp_exp: float | None = None


@dataclass
class AuctionRecord:
    """What the exchange knows about one auction (the scorecard's raw material)."""

    opp: Opportunity
    t: float  # seconds into the run
    source_region: str = ""  # where the sending exchange sits
    status: int = 0  # 200, 204, 4xx/5xx, 0 = transport error
    server_ms: float = 0.0  # measured HTTP round trip on loopback
    network_ms: float = 0.0  # simulated RTT exchange <-> region
    late: bool = False
    bid_price: float = 0.0
    campaign_id: str | None = None
    won: bool = False
    price: float = 0.0  # clearing CPM
    clicked: bool = False
    true_ctr: float = 0.0
    region: str = ""  # where it was sent (the DNS's answer, or the next nearest while that is ejected)
    degraded: tuple[str, ...] = ()  # what the fleet said it degraded (x-fleet-degraded, ext.fleet)
    reason: str = ""  # a no-bid's x-fleet-reason
    partner: str = ""  # the answer resold a demand partner's bid (its id; the bid's ext.pricing)
    timed_out: bool = False  # the exchange stopped waiting (tmax plus the margin): status 0, late

    @property
    def latency_ms(self) -> float:
        return self.server_ms + self.network_ms


class Exchanges(NoticeQueue):
    """Drives one simulated run against the fleet and keeps the exchange-side ledger."""

    def __init__(self, market: Market, regions, campaigns: list[Campaign], cfg: SimConfig, progress=print,
                 dns: DNS | None = None, ejector: Ejector | None = None):
        self.market = market
        self.dns = dns  # fleet.sim.dns: health-checked failover between regions (None: always the meant one)
        self.ejector = ejector  # fleet.sim.ejection: skip a region failing auctions (None: never)
        self._start = 0.0  # perf_counter at the run's start
        self.regions = regions  # RegionsFile
        self.campaigns = {c.id: c for c in campaigns}
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)  # notices: faults and clicks
        self.opp_rng = random.Random(cfg.seed + 3)  # the stream: identical whatever the fleet does
        self.route_rng = random.Random(cfg.seed + 4)  # which exchange sends it
        self.records: list[AuctionRecord] = []
        self.notices: Counter[str] = Counter()  # delivered (HTTP 200) per kind
        self.notice_outcomes: Counter[str] = Counter()  # planned/dropped/duplicated/late per kind
        self.notice_errors: Counter[str] = Counter()
        # bid id -> (what the exchange charged, CPM USD; campaign; region): acknowledged bills
        self.billed: dict[str, tuple[float, str | None, str]] = {}
        self.forged: Counter[str] = Counter()  # refused / accepted forgeries
        self.cur_rng = random.Random(cfg.seed + 5)
        self.progress = progress
        self._pending: list = []  # heap of (due, seq, kind, url, truth)
        self._seq = 0
        names = list(regions.regions)
        self.region_weights = [regions.regions[n].budget_share for n in names]
        self.region_names = names
        self.bursts = self._plan_bursts()

    # -- traffic shape ---------------------------------------------------------------------

    def _plan_bursts(self) -> list[tuple[float, float]]:
        out, t = [], 0.0
        r = random.Random(self.cfg.seed + 1)
        while True:
            t += r.expovariate(1.0 / self.cfg.burst_every_s)
            if t >= self.cfg.duration_s:
                return out
            out.append((t, t + self.cfg.burst_len_s))

    def rate_at(self, t: float) -> float:
        """Diurnal curve over one compressed day (trough at the start), times bursts."""
        day = 1.0 - self.cfg.diurnal_amplitude * math.cos(2 * math.pi * t / self.cfg.duration_s)
        burst = self.cfg.burst_factor if any(a <= t < b for a, b in self.bursts) else 1.0
        return self.cfg.rate * day * burst

    def arrivals(self) -> list[float]:
        """Non-homogeneous Poisson arrival times by thinning (open loop: fixed in advance)."""
        peak = self.cfg.rate * (1 + self.cfg.diurnal_amplitude) * self.cfg.burst_factor
        r = random.Random(self.cfg.seed + 2)
        out, t = [], 0.0
        while True:
            t += r.expovariate(peak)
            if t >= self.cfg.duration_s:
                return out
            if r.random() < self.rate_at(t) / peak:
                out.append(t)

    # -- one auction -----------------------------------------------------------------------

    def wait_s(self, tmax_ms: float) -> float:
        """How long the exchange waits for a bid request's answer: its tmax plus the margin, on
        the loopback clock. The simulated network is added after (``latency_ms``), so an answer
        past ``tmax - network`` is late whatever this is; waiting the whole tmax keeps those late
        answers measured (and answers, not failures, to the ejector) instead of timeouts."""
        return round((tmax_ms + self.cfg.timeout_margin_ms) / 1000.0, 6)

    async def auction(self, session: aiohttp.ClientSession, rec: AuctionRecord) -> None:
        opp = rec.opp
        spec = self.regions.regions[rec.region or opp.region]
        url = f"{self.cfg.base_url}{spec.route_prefix}/openrtb2/bid"
        req = opp.to_openrtb()
        jpy = self.cfg.jpy_share > 0 and self.cur_rng.random() < self.cfg.jpy_share
        if jpy:
            req["cur"] = ["JPY"]
        if self.cfg.imp_exp:
            for imp in req["imp"]:
                imp["exp"] = int(self.cfg.imp_exp)
        body = msgspec.json.encode(req)
        headers = {"content-type": "application/json", "x-openrtb-version": "2.6"}
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=self.wait_s(opp.tmax))) as resp:
                payload = await resp.read()
                rec.status = resp.status
                rec.reason = resp.headers.get("x-fleet-reason", "")
                if resp.headers.get("x-fleet-degraded"):
                    rec.degraded = tuple(resp.headers["x-fleet-degraded"].split(","))
        except asyncio.TimeoutError:  # the exchange gave up at its tmax: not answered in time
            rec.status, rec.late, rec.timed_out = 0, True, True
            rec.server_ms = (time.perf_counter() - t0) * 1000
            return
        except aiohttp.ClientError:
            rec.status = 0
            return
        rec.server_ms = (time.perf_counter() - t0) * 1000
        rec.late = rec.latency_ms > opp.tmax
        if rec.status != 200 or rec.late:
            return  # a late answer is a no-bid to the exchange
        resp = msgspec.json.decode(payload)
        rec.degraded = tuple(((resp.get("ext") or {}).get("fleet") or {}).get("degraded") or ())
        bid = resp["seatbid"][0]["bid"][0]
        rate = self.regions.currencies.get(resp.get("cur") or "USD", 1.0)  # USD per unit
        rec.bid_price = float(bid["price"]) * rate
        rec.campaign_id = bid.get("cid")
        pricing = str((bid.get("ext") or {}).get("pricing", ""))
        rec.partner = pricing.removeprefix("partner:") if pricing.startswith("partner:") else ""
        campaign = self.campaigns.get(rec.campaign_id)
        rec.won, rec.price = resolve(rec.bid_price, opp.competing, opp.floor, opp.at)
        ident = {"auction_id": opp.request_id, "imp_id": bid["impid"]}
        if rec.won:
            # The exchange charges in the response's currency; the JPY one leaves the macro.
            charged = rec.price / rate
            cur = None if jpy else (resp.get("cur") or "USD")
            self._notice("win", substitute(bid["nurl"], price=charged, currency=cur, **ident))
            if self.rng.random() < self.cfg.render_rate:
                self._notice("bill", substitute(bid["burl"], price=charged, currency=cur, **ident),
                             truth=(bid["id"], (rec.price, rec.campaign_id, rec.region or opp.region)))
                if self.cfg.forge_rate and self.rng.random() < self.cfg.forge_rate:
                    self._forge(bid, charged, ident)
                if campaign is not None:
                    rec.true_ctr = self.market.ctr(opp, campaign)
                    if self.rng.random() < rec.true_ctr:
                        rec.clicked = True
                        # the bid's own click tracker (its URL is signed for clicks only)
                        click = (bid.get("ext") or {}).get("clickurl")
                        if click:
                            self._notice("click", substitute(click, price=rec.price, **ident))
        else:
            self._notice("loss", substitute(bid["lurl"], loss=102, min_to_win=max(opp.competing, opp.floor), **ident))

    async def _sent(self, session: aiohttp.ClientSession, rec: AuctionRecord) -> None:
        """One auction, its outcome counted by the ejector against the region it went to."""
        try:
            await self.auction(session, rec)
        finally:
            if self.ejector is not None:
                self.ejector.record(rec.region, rec.status, rec.t, time.perf_counter() - self._start)

    # -- the run ---------------------------------------------------------------------------

    @property
    def _origin(self) -> str:
        """Scheme and host of ``base_url``: notice URLs carry their own full path."""
        b = urlsplit(self.cfg.base_url)
        return f"{b.scheme}://{b.netloc}"

    async def run(self) -> list[AuctionRecord]:
        cfg = self.cfg
        times = self.arrivals()
        connector = aiohttp.TCPConnector(limit=cfg.concurrency)
        timeout = aiohttp.ClientTimeout(total=2.0)  # notices; a bid request waits its own tmax (wait_s)
        stop = asyncio.Event()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            notifier = asyncio.create_task(self._send_notices(session, stop))
            start = self._start = time.perf_counter()
            prefixes = {n: s.route_prefix for n, s in self.regions.regions.items()}
            checker = None if self.dns is None else asyncio.create_task(health_checks(
                self.dns, session, self._origin, prefixes, start, stop))
            prober = None if self.ejector is None else asyncio.create_task(probes(
                self.ejector, session, self._origin, prefixes, start, stop))
            inflight: set[asyncio.Task] = set()
            next_report = 5.0
            for t in times:
                delay = start + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                region = self.opp_rng.choices(self.region_names, self.region_weights)[0]
                opp = self.market.opportunity(self.opp_rng, region)
                # Most auctions come from an exchange in the region; some from one far away, whose
                # round trip (regions.yaml's matrix) eats into the same tmax.
                src = region
                if self.route_rng.random() < cfg.cross_region_share and len(self.region_names) > 1:
                    src = self.route_rng.choice([r for r in self.region_names if r != region])
                dest = region if self.dns is None else self.dns.resolve(src, region, t)
                if self.ejector is not None:
                    dest = self.ejector.route(src, dest)
                rec = AuctionRecord(opp=opp, t=t, network_ms=self.regions.latency_ms[src][dest], region=dest)
                rec.source_region = src
                self.records.append(rec)
                task = asyncio.create_task(self._sent(session, rec))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if t >= next_report:
                    next_report += 5.0
                    self.progress(self.status_line(t))
            if inflight:
                await asyncio.gather(*inflight)
            grace_end = time.perf_counter() + cfg.grace_s
            while self._pending and time.perf_counter() < grace_end:
                await asyncio.sleep(0.1)
            stop.set()
            await notifier
            for task in (checker, prober):
                if task is not None:
                    await task
        self.progress(self.status_line(cfg.duration_s) + "  done")
        return self.records

    def status_line(self, t: float) -> str:
        recs = self.records
        answered = sum(1 for r in recs if r.status in (200, 204))
        bids = sum(1 for r in recs if r.status == 200 and not r.late)
        wins = sum(1 for r in recs if r.won)
        spend = sum(r.price for r in recs if r.won) / 1000
        return (f"[{t:6.1f}s / {self.cfg.duration_s:.0f}s] rate {self.rate_at(min(t, self.cfg.duration_s - 1e-6)):5.1f}/s  "
                f"auctions {len(recs):6d}  answered {answered:6d}  bids {bids:6d}  wins {wins:5d}  "
                f"spend ${spend:8.2f}  notices {sum(self.notices.values()):6d}")
