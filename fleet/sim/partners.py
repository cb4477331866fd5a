"""Simulated demand partners: real HTTP servers speaking OpenRTB, with a tail.

Each partner is an aiohttp server on its own port with a latency distribution (lognormal), a bid
rate, prices tied to the ground-truth market (``fleet.sim.market``: the publisher's competing
price level and the format's premium, times the partner's ``price_scale``, lognormal noise, in
the partner's currency), and its failure modes: an error rate (500s and dropped connections), a
hang rate (answers after ``hang_s``, i.e. never within any cutoff), garbage (malformed JSON,
wrong types, bad prices, unknown imps, blocked advertisers). ``SET`` is the eight ``fleet up
--partners sim`` starts. Every server counts what it saw (``GET /stats``), so a test can check
that the bidder's counts equal the partners'. One run-time control, off the OpenRTB path: ``POST
/admin/hang`` ``{"hang": true}`` makes every later call hang (held until released, at most
``hang_s``, then a 204) and ``{"hang": false}`` releases the held calls and answers normally again
(``set_hang``: the fault bench's partner-hang scenario).

Run them on their own: ``python -m fleet.sim.partners --port 9100`` (prints the region entries).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

from aiohttp import web

from fleet.sim.market import FORMAT_PRICE, Market


@dataclass(frozen=True)
class Profile:
    id: str
    latency_ms: float = 10.0  # median
    latency_sigma: float = 0.3  # lognormal shape
    bid_rate: float = 0.6
    price_scale: float = 1.0  # times the market's competing price level
    price_sigma: float = 0.35
    error_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 30.0
    garbage_rate: float = 0.0
    deals_only: bool = False
    currency: str = "USD"
    cutoff_class: str = "standard"  # what the region's configuration calls it
    adomain: str = ""  # default: "<id>-advertiser.example"


SET = (
    Profile("fast", latency_ms=5, bid_rate=0.5, price_scale=0.9, cutoff_class="fast"),
    Profile("medium", latency_ms=16, bid_rate=0.6, price_scale=1.0),
    Profile("slow", latency_ms=38, latency_sigma=0.45, bid_rate=0.7, price_scale=1.2, cutoff_class="slow"),
    Profile("flaky", latency_ms=8, error_rate=0.3, cutoff_class="fast"),
    Profile("hanging", latency_ms=10, hang_rate=0.25),
    Profile("garbage", latency_ms=4, garbage_rate=0.7, cutoff_class="fast"),
    Profile("dealer", latency_ms=9, bid_rate=0.9, deals_only=True, cutoff_class="fast"),
    Profile("euro", latency_ms=14, currency="EUR"),
)
FAST4 = tuple(Profile(f"fast{i}", latency_ms=5, bid_rate=0.5, price_scale=0.9, cutoff_class="fast")
              for i in range(1, 5))  # the capacity and latency benchmarks' four fast partners
SETS = {"sim": SET, "fast4": FAST4}
RATES = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "JPY": 0.0066}  # one unit in USD (as regions.yaml)
GARBAGE = ("not_json", "wrong_types", "negative_price", "unknown_imp", "string_price", "empty_object",
           "wrong_id", "no_adm", "huge_price", "blocked_adomain", "status_500", "valid")


@dataclass
class Seen:
    requests: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=64))  # (headers, decoded request)


class SimPartner:
    def __init__(self, profile: Profile, market: Market, seed: int = 0):
        self.p = profile
        self.rng = random.Random(f"{seed}:{profile.id}")
        self.levels = {pub.id: pub.price_mu for pub in market.publishers}
        self.seen = Seen()
        self.ids = 0
        self.hanging = False  # set at run time (POST /admin/hang): every call is held
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/openrtb2/bid", self.bid)
        app.router.add_get("/stats", self.stats)
        app.router.add_post("/reset", self.reset)
        app.router.add_post("/admin/hang", self.admin_hang)
        return app

    def set_hang(self, on: bool) -> None:
        """Hang every call from now on (``on``), or release the held ones and answer again."""
        if on and not self.hanging:
            self._release = asyncio.Event()
        elif not on:
            self._release.set()
        self.hanging = on

    async def admin_hang(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            on = body["hang"]
            if not isinstance(on, bool):
                raise TypeError
        except Exception:
            return web.json_response({"error": 'body must be {"hang": true|false}'}, status=400)
        self.set_hang(on)
        return web.json_response({"id": self.p.id, "hanging": self.hanging,
                                  "held": self.seen.by_outcome["held"]})

    async def stats(self, _req: web.Request) -> web.Response:
        return web.json_response({"id": self.p.id, "requests": self.seen.requests, "hanging": self.hanging,
                                  "process_cpu_s": time.process_time(),  # the servers' process, all partners
                                  "outcomes": dict(self.seen.by_outcome), "profile": asdict(self.p)})

    async def reset(self, _req: web.Request) -> web.Response:
        self.seen = Seen()
        return web.json_response({"ok": True})

    def _latency_s(self) -> float:
        p = self.p
        return p.latency_ms * math.exp(self.rng.gauss(0.0, p.latency_sigma)) / 1000.0

    def _price(self, req: dict, imp: dict) -> float:
        """CPM in the partner's currency: the market's level for the publisher and format."""
        pub = ((req.get("site") or req.get("app") or {}).get("publisher") or {}).get("id")
        mu = self.levels.get(pub, math.log(1.5))
        fmt = next((f for f in ("video", "native", "audio") if f in imp), "banner")
        usd = math.exp(mu + FORMAT_PRICE[fmt] + math.log(self.p.price_scale) + self.rng.gauss(0.0, self.p.price_sigma))
        return round(usd / RATES.get(self.p.currency, 1.0), 4)

    def _bids(self, req: dict) -> list[dict]:
        out = []
        for imp in req.get("imp", []):
            deals = ((imp.get("pmp") or {}).get("deals")) or []
            if self.p.deals_only and not deals:
                continue
            if self.rng.random() >= self.p.bid_rate:
                continue
            price = self._price(req, imp)
            floor = float(imp.get("bidfloor", 0.0))
            deal = deals[0] if self.p.deals_only else None
            if deal is not None:
                floor = max(floor, float(deal.get("bidfloor", 0.0)) / RATES.get(self.p.currency, 1.0)
                            * RATES.get(deal.get("bidfloorcur", "USD"), 1.0))
            if price < floor:
                if self.rng.random() < 0.7:
                    continue  # most below-floor values are not bid; some are (the bidder drops them)
            self.ids += 1
            bid = {"id": f"{self.p.id}-{self.ids}", "impid": imp["id"], "price": price,
                   "adm": f"<div data-partner='{self.p.id}'>ad {self.ids}</div>",
                   "adomain": [self.p.adomain or f"{self.p.id}-advertiser.example"],
                   "crid": f"{self.p.id}-cr-{self.ids % 7}", "cid": f"{self.p.id}-c-{imp['id']}",
                   "nurl": f"https://partner.invalid/{self.p.id}/win?p=${{AUCTION_PRICE}}&b=${{AUCTION_BID_ID}}",
                   "burl": f"https://partner.invalid/{self.p.id}/bill?p=${{AUCTION_PRICE}}",
                   "lurl": f"https://partner.invalid/{self.p.id}/loss?r=${{AUCTION_LOSS}}"}
            if deal is not None:
                bid["dealid"] = deal["id"]
            out.append(bid)
        return out

    def _garbage(self, req: dict) -> tuple[int, bytes]:
        kind = self.rng.choice(GARBAGE)
        self.seen.by_outcome[f"garbage.{kind}"] += 1
        imp = (req.get("imp") or [{"id": "1"}])[0]
        good = {"id": "g1", "impid": imp.get("id", "1"), "price": 2.0, "adm": "<div>g</div>",
                "adomain": ["garbage.example"], "crid": "g-cr"}
        body: object
        if kind == "not_json":
            return 200, b'{"id": "' + bytes(self.rng.getrandbits(8) for _ in range(40)) + b"\x00"
        if kind == "status_500":
            return 500, b"oops"
        if kind == "empty_object":
            body = {}
        elif kind == "wrong_types":
            body = {"id": req.get("id"), "seatbid": [{"bid": [{"id": 7, "impid": ["x"], "price": {"a": 1}}]}]}
        elif kind == "wrong_id":
            body = {"id": "someone-else", "seatbid": [{"bid": [good]}]}
        else:
            bid = dict(good)
            if kind == "negative_price":
                bid["price"] = -3.0
            elif kind == "unknown_imp":
                bid["impid"] = "no-such-imp"
            elif kind == "string_price":
                bid["price"] = "2.0"
            elif kind == "no_adm":
                bid.pop("adm")
            elif kind == "huge_price":
                bid["price"] = 1e300
            elif kind == "blocked_adomain":
                bid["adomain"] = list(req.get("badv") or ["blocked.example"])
            body = {"id": req.get("id"), "seatbid": [{"seat": "garbage", "bid": [bid]}], "cur": self.p.currency}
        return 200, json.dumps(body).encode()

    async def bid(self, request: web.Request) -> web.StreamResponse:
        self.seen.requests += 1
        raw = await request.read()
        try:
            if raw[:2] == b"\x1f\x8b":  # gzip the server did not already undo
                raw = gzip.decompress(raw)
            req = json.loads(raw)
        except Exception:
            self.seen.by_outcome["bad_request"] += 1
            return web.Response(status=400)
        self.seen.recent.append((dict(request.headers), req))
        if self.hanging:  # the run-time hang: held until released (or hang_s), then nothing
            self.seen.by_outcome["held"] += 1
            try:
                await asyncio.wait_for(self._release.wait(), self.p.hang_s)
            except asyncio.TimeoutError:
                pass
            return web.Response(status=204)
        await asyncio.sleep(self._latency_s())
        r = self.rng.random()
        if r < self.p.hang_rate:
            self.seen.by_outcome["hang"] += 1
            await asyncio.sleep(self.p.hang_s)
            return web.Response(status=204)
        r -= self.p.hang_rate
        if r < self.p.error_rate:
            self.seen.by_outcome["error"] += 1
            if self.rng.random() < 0.5 and request.transport is not None:
                request.transport.close()  # a dropped connection
                return web.Response(status=500)
            return web.Response(status=500, text="partner error")
        r -= self.p.error_rate
        if r < self.p.garbage_rate:
            status, body = self._garbage(req)
            return web.Response(status=status, body=body, content_type="application/json")
        bids = self._bids(req)
        if not bids:
            self.seen.by_outcome["nobid"] += 1
            return web.Response(status=204)
        self.seen.by_outcome["bid"] += 1
        body = json.dumps({"id": req.get("id"), "cur": self.p.currency,
                           "seatbid": [{"seat": f"{self.p.id}-seat", "bid": bids}]}).encode()
        return web.Response(body=body, content_type="application/json")


class PartnerServers:
    """Several partners, each on its own port, on one event loop."""

    def __init__(self, profiles=SET, market: Market | None = None, host: str = "127.0.0.1", seed: int = 0):
        market = market or Market()
        self.host = host
        self.partners = [SimPartner(p, market, seed) for p in profiles]
        self.runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    async def start(self, base_port: int = 0) -> dict[str, str]:
        """Endpoints by partner id (``base_port`` 0: any free ports)."""
        for n, sp in enumerate(self.partners):
            runner = web.AppRunner(sp.app(), access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, self.host, base_port + n if base_port else 0)
            await site.start()
            self.runners.append(runner)
            self.ports[sp.p.id] = site._server.sockets[0].getsockname()[1]
        return self.endpoints()

    def endpoints(self) -> dict[str, str]:
        return {pid: f"http://{self.host}:{port}/openrtb2/bid" for pid, port in self.ports.items()}

    def seen(self) -> dict[str, int]:
        return {sp.p.id: sp.seen.requests for sp in self.partners}

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()


async def set_hang(endpoint: str, on: bool, timeout_s: float = 5.0) -> dict:
    """Make the simulated partner at ``endpoint`` (its OpenRTB URL, as in the region entries)
    hang (``on``) or answer again, through its admin route; what it says back."""
    import httpx

    base = endpoint.rsplit("/openrtb2/", 1)[0]
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        r = await http.post(f"{base}/admin/hang", json={"hang": on})
        r.raise_for_status()
        return r.json()


def region_entries(servers_or_endpoints, profiles=SET, qps: float = 5000.0) -> list[dict]:
    """The ``regions.yaml`` ``partners:`` entries for these servers (every tier)."""
    eps = servers_or_endpoints.endpoints() if isinstance(servers_or_endpoints, PartnerServers) else servers_or_endpoints
    out = []
    for p in profiles:
        if p.id not in eps:
            continue
        entry = {"id": p.id, "endpoint": eps[p.id], "cutoff_class": p.cutoff_class, "currency": p.currency,
                 "qps": qps, "seat": f"{p.id}-seat"}
        if p.deals_only:
            entry["tiers"] = ["premium"]
        if p.id == "euro":
            entry["openrtb"] = "2.5"
            entry["gzip"] = True
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="first port, one per partner (0: any free ports)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", default=None, help="write the region entries (JSON) to this file")
    ap.add_argument("--set", dest="which", choices=sorted(SETS), default="sim", help="which partners")
    args = ap.parse_args()

    async def run() -> None:
        profiles = SETS[args.which]
        servers = PartnerServers(profiles, host=args.host, seed=args.seed)
        await servers.start(args.port)
        entries = json.dumps(region_entries(servers, profiles))
        if args.write:
            with open(args.write, "w") as fh:
                fh.write(entries)
        print(entries, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
