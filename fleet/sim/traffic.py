"""Plausible OpenRTB 2.6 bid requests, seeded: the traffic of the burst, the benchmarks and tests.

The mix follows what exchanges send a DSP: mostly banner, some video, native and a little audio;
site and app; geography by region; a share of privacy flags (GDPR in the EU, LMT on apps, a
little COPPA); occasional deals; floors mostly in USD, some in the local currency.
"""

from __future__ import annotations

import random
import uuid

REGION_GEO = {
    "us-east": (["USA", "CAN", "MEX"], "USD"),
    "eu-west": (["DEU", "FRA", "GBR", "NLD", "ESP", "ITA"], "EUR"),
    "ap-southeast": (["SGP", "JPN", "AUS", "IND"], "SGD"),
}
SIZES = [(300, 250), (728, 90), (320, 50), (300, 600), (970, 250), (320, 480), (160, 600)]
DOMAINS = ["news.example", "sports.example", "recipes.example", "tech.example", "weather.example"]
BUNDLES = ["com.example.reader", "com.example.puzzle", "com.example.maps", "com.example.game"]
UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
]
SEGMENTS = ["sports-fan", "runner", "traveller", "foodie", "gamer", "seg-3", "seg-17"]
NATIVE_REQ = '{"ver":"1.2","assets":[{"id":1,"required":1,"title":{"len":90}},{"id":2,"required":1,"img":{"type":3,"w":1200,"h":627}}]}'


class RequestFactory:
    def __init__(self, region: str, seed: int = 1):
        self.rng = random.Random(seed)
        self.region = region
        self.countries, self.local_cur = REGION_GEO.get(region, (["USA"], "USD"))

    def imp(self, n: int) -> dict:
        r = self.rng
        kind = r.choices(["banner", "video", "native", "audio"], [0.7, 0.15, 0.1, 0.05])[0]
        imp: dict = {"id": str(n), "secure": 1}
        if kind == "banner":
            sizes = r.sample(SIZES, r.randint(1, 2))
            imp["banner"] = {"format": [{"w": w, "h": h} for w, h in sizes], "pos": r.choice([0, 1, 3])}
        elif kind == "video":
            imp["video"] = {"mimes": ["video/mp4"], "minduration": 5, "maxduration": 30,
                            "protocols": [2, 3, 7], "w": 640, "h": 360, "plcmt": 1}
        elif kind == "native":
            imp["native"] = {"request": NATIVE_REQ, "ver": "1.2"}
        else:
            imp["audio"] = {"mimes": ["audio/mpeg"], "minduration": 15, "maxduration": 30}
        floor = round(r.lognormvariate(-0.3, 0.8), 2)
        if r.random() < 0.25:
            imp["bidfloor"], imp["bidfloorcur"] = floor, self.local_cur
        else:
            imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
        if r.random() < 0.05:
            imp["pmp"] = {"private_auction": 0,
                          "deals": [{"id": "deal-premium-1", "bidfloor": 8.0, "bidfloorcur": "USD", "at": 1}]}
        return imp

    def request(self) -> dict:
        r = self.rng
        country = r.choice(self.countries)
        eu = self.region == "eu-west"
        req: dict = {
            "id": uuid.UUID(int=r.getrandbits(128)).hex,
            "imp": [self.imp(i + 1) for i in range(1 if r.random() < 0.85 else r.randint(2, 3))],
            "device": {
                "ua": r.choice(UAS),
                "ip": f"{r.randint(11, 99)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                "devicetype": r.choice([1, 2, 4]),
                "os": r.choice(["ios", "android", "windows"]),
                "geo": {"country": country},
            },
            "user": {"id": f"u{r.randrange(50_000)}"},
            "at": r.choice([1, 1, 1, 2]),
            "tmax": r.choice([80, 100, 120, 150]),
            "cur": ["USD"],
            "regs": {"coppa": 1 if r.random() < 0.01 else 0},
            "source": {"tid": uuid.UUID(int=r.getrandbits(128)).hex},
        }
        if r.random() < 0.3:
            req["user"]["data"] = [{"id": "dmp", "segment": [{"id": s} for s in r.sample(SEGMENTS, 2)]}]
        if eu:
            req["regs"]["gdpr"] = 1
            if r.random() < 0.8:
                # a real TC string: our vendor (1234) consented to purposes 1-4 and 7
                req["user"]["consent"] = "CO5rKAAO5rKAAAHABBENCWEgAPIAAAAAAAYgJpQAgF5gTSAACAAAAA"
        if r.random() < 0.6:
            req["site"] = {"id": f"s{r.randrange(100)}", "domain": r.choice(DOMAINS),
                           "page": "https://news.example/story", "publisher": {"id": f"pub-{r.randrange(40)}"}}
        else:
            req["app"] = {"id": f"a{r.randrange(100)}", "bundle": r.choice(BUNDLES),
                          "publisher": {"id": f"pub-{r.randrange(40)}"}}
            req["device"]["ifa"] = uuid.UUID(int=r.getrandbits(128)).hex
            req["device"]["lmt"] = 1 if r.random() < 0.1 else 0
        if r.random() < 0.2:
            req["bcat"] = ["IAB25", "IAB26"]
        return req
