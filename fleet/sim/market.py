"""The ground-truth market: who is out there, what an impression is truly worth, who else bids.

Everything is drawn from one seed, so a run, a training set and a test can be reproduced. The
bidder never sees this module's hidden parts (user propensity, the competing bid); it sees only
the OpenRTB request built from an ``Opportunity``. The true probabilities are documented
functions of request and campaign features, so a model can learn them and an oracle can use them:

    logit P(click | impression, campaign) =
        -5.6
        + publisher.quality                         (per publisher, N(0, 0.5))
        + FORMAT_CTR[format] + SIZE_CTR[size]        (video/native click more; 320x50 less)
        + DEVICE_CTR[device type]
        + 1.3 * [a user segment is among the campaign's interests]   (affinity)
        + campaign creative quality                   (per campaign, N(0, 0.3), from its id)
        + user.propensity                             (hidden, N(0, 0.4): irreducible noise)

    logit P(conversion | click) = -2.0 + 0.8 * affinity + 0.5 * publisher.quality

The highest competing bid (CPM, USD) for an impression is lognormal around the publisher's price
level, higher for video and for users with more segments:

    log competing ~ N(publisher.price_mu + FORMAT_PRICE[format] + 0.12 * n_segments, 0.45)

Auctions: the bidder wins when its bid beats both the competing bid and the floor. First price
(at=1) pays the bid; second price (at=2) pays max(competing, floor) + 0.01, never above the bid.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from dataclasses import dataclass, field

from fleet.campaigns.model import Campaign

FORMAT_CTR = {"banner": 0.0, "video": 0.9, "native": 0.6, "audio": -0.3}
SIZE_CTR = {(300, 250): 0.1, (320, 50): -0.5, (728, 90): -0.2, (300, 600): 0.3, (970, 250): 0.2,
            (160, 600): -0.1, (320, 480): 0.4}
DEVICE_CTR = {1: 0.15, 2: 0.0, 4: 0.25, 5: 0.1}
FORMAT_PRICE = {"banner": 0.0, "video": 1.1, "native": 0.4, "audio": 0.6}
BASE_CTR_LOGIT = -5.6

# Campaign interest segments by IAB tier-1 category (the campaign's ``cat``).
INTERESTS = {
    "IAB17": ("sports-fan", "runner"), "IAB18": ("runner", "fashion"), "IAB20": ("traveller",),
    "IAB9": ("gamer",), "IAB12": ("news-junkie",), "IAB2": ("auto-intender",),
    "IAB22": ("shopper", "fashion"), "IAB1": ("music-lover",),
}
SEGMENTS = ["sports-fan", "runner", "fashion", "traveller", "gamer", "news-junkie",
            "auto-intender", "shopper", "music-lover", "foodie"]
REGION_COUNTRIES = {
    "us-east": ["USA", "USA", "USA", "CAN", "MEX"],
    "eu-west": ["DEU", "FRA", "GBR", "NLD", "ESP", "ITA"],
    "ap-southeast": ["SGP", "JPN", "AUS", "IND"],
}
PLACEMENTS = [("banner", (300, 250)), ("banner", (728, 90)), ("banner", (320, 50)),
              ("banner", (300, 600)), ("banner", (970, 250)), ("banner", (320, 480)),
              ("video", (640, 360)), ("native", (1200, 627)), ("audio", (0, 0))]
PLACEMENT_WEIGHTS = [20, 10, 14, 6, 4, 6, 10, 8, 3]
CONSENT = "CO5rKAAO5rKAAAHABBENCWEgAPIAAAAAAAYgJpQAgF5gTSAACAAAAA"  # TCF v2: vendor 1234 (ours), purposes 1-4, 7
NATIVE_REQ = ('{"ver":"1.2","assets":[{"id":1,"required":1,"title":{"len":90}},'
              '{"id":2,"required":1,"img":{"type":3,"w":1200,"h":627}}]}')


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from a string (per-campaign effects without shared state)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def campaign_quality(campaign_id: str) -> float:
    """Creative quality of a campaign, N(0, 0.3), fixed by its id."""
    u = min(max(_unit_hash("quality:" + campaign_id), 1e-9), 1 - 1e-9)
    return 0.3 * math.sqrt(2) * _erfinv(2 * u - 1)


def _erfinv(y: float) -> float:
    # Giles' single-precision approximation: plenty for drawing a fixed effect.
    w = -math.log((1.0 - y) * (1.0 + y))
    if w < 5.0:
        w -= 2.5
        p = 2.81022636e-08
        for c in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                  -0.00417768164, 0.246640727, 1.50140941):
            p = c + p * w
    else:
        w = math.sqrt(w) - 3.0
        p = -0.000200214257
        for c in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                  0.00943887047, 1.00167406, 2.83297682):
            p = c + p * w
    return p * y


def interests(c: Campaign) -> frozenset[str]:
    out = set(c.targeting.segments)
    for cat in c.cat:
        out.update(INTERESTS.get(cat.split("-")[0], ()))
    return frozenset(out)


@dataclass(frozen=True)
class Publisher:
    id: str
    kind: str  # "site" or "app"
    name: str  # domain or bundle
    region: str
    quality: float
    price_mu: float  # log of the median competing CPM
    floor_ratio: float  # floor as a share of the median competing CPM
    placements: tuple[tuple[str, tuple[int, int]], ...]


@dataclass(frozen=True)
class User:
    id: str
    region: str
    country: str
    device_type: int
    os: str
    segments: tuple[str, ...]
    propensity: float  # hidden


@dataclass
class Opportunity:
    """One impression offered by an exchange: what the request shows, and what it hides."""

    request_id: str
    region: str
    publisher: Publisher
    user: User
    fmt: str
    size: tuple[int, int]
    floor: float  # CPM, USD
    at: int
    tmax: int
    gdpr: bool
    consent: bool
    coppa: bool
    lmt: bool
    competing: float  # hidden: highest other bid, CPM
    hidden: dict = field(default_factory=dict)

    @property
    def user_level_allowed(self) -> bool:
        return not (self.coppa or self.lmt or (self.gdpr and not self.consent))

    def to_openrtb(self) -> dict:
        p, u = self.publisher, self.user
        imp: dict = {"id": "1", "bidfloor": round(self.floor, 4), "bidfloorcur": "USD", "secure": 1}
        if self.fmt == "banner":
            imp["banner"] = {"format": [{"w": self.size[0], "h": self.size[1]}]}
        elif self.fmt == "video":
            imp["video"] = {"mimes": ["video/mp4"], "minduration": 5, "maxduration": 30,
                            "w": self.size[0], "h": self.size[1], "protocols": [2, 3, 7], "plcmt": 1}
        elif self.fmt == "native":
            imp["native"] = {"request": NATIVE_REQ, "ver": "1.2"}
        else:
            imp["audio"] = {"mimes": ["audio/mpeg"], "minduration": 15, "maxduration": 30}
        req: dict = {
            "id": self.request_id, "imp": [imp], "at": self.at, "tmax": self.tmax, "cur": ["USD"],
            "device": {"ua": "Mozilla/5.0 (sim)", "ip": "81.2.69.160", "devicetype": u.device_type,
                       "os": u.os, "lmt": int(self.lmt), "geo": {"country": u.country}},
            "user": {"id": u.id},
            "regs": {"coppa": int(self.coppa), "gdpr": int(self.gdpr)},
        }
        if u.segments:
            req["user"]["data"] = [{"id": "sim-dmp", "segment": [{"id": s} for s in u.segments]}]
        if self.consent:
            req["user"]["consent"] = CONSENT
        inv = {"id": p.id, "publisher": {"id": p.id}}
        if p.kind == "site":
            req["site"] = {**inv, "domain": p.name, "page": f"https://{p.name}/article"}
        else:
            req["app"] = {**inv, "bundle": p.name}
            req["device"]["ifa"] = str(uuid.UUID(int=int(_unit_hash(u.id) * 2**64)))
        return req


class Market:
    """Publishers, users and the true response and price functions, all from one seed."""

    def __init__(self, seed: int = 7, regions: tuple[str, ...] = ("us-east", "eu-west", "ap-southeast"),
                 n_publishers: int = 60, n_users: int = 20_000):
        rng = random.Random(seed)
        self.seed = seed
        self.regions = regions
        self.publishers: list[Publisher] = []
        for i in range(n_publishers):
            kind = "site" if rng.random() < 0.6 else "app"
            placements = tuple(rng.choices(PLACEMENTS, PLACEMENT_WEIGHTS, k=rng.randint(1, 3)))
            self.publishers.append(Publisher(
                id=f"pub-{i}", kind=kind,
                name=f"site{i}.example" if kind == "site" else f"com.example.app{i}",
                region=regions[i % len(regions)], quality=rng.gauss(0, 0.5),
                price_mu=math.log(rng.uniform(0.6, 3.0)), floor_ratio=rng.uniform(0.1, 0.7),
                placements=placements,
            ))
        self.users: list[User] = []
        for i in range(n_users):
            region = regions[i % len(regions)]
            dt = rng.choice([1, 2, 2, 4, 4, 5])
            os_ = {1: rng.choice(["ios", "android"]), 4: rng.choice(["ios", "android"]),
                   5: "android"}.get(dt, rng.choice(["windows", "macos"]))
            k = rng.choices([0, 1, 2, 3], [0.35, 0.35, 0.2, 0.1])[0]
            self.users.append(User(
                id=f"su{i}", region=region, country=rng.choice(REGION_COUNTRIES.get(region, ["USA"])),
                device_type=dt, os=os_, segments=tuple(rng.sample(SEGMENTS, k)),
                propensity=rng.gauss(0, 0.4),
            ))
        self._by_region = {r: ([p for p in self.publishers if p.region == r],
                               [u for u in self.users if u.region == r]) for r in regions}

    # -- truth ----------------------------------------------------------------------------

    def affinity(self, opp: Opportunity, c: Campaign) -> bool:
        return bool(interests(c).intersection(opp.user.segments))

    def ctr(self, opp: Opportunity, c: Campaign) -> float:
        x = (BASE_CTR_LOGIT + opp.publisher.quality + FORMAT_CTR[opp.fmt] + SIZE_CTR.get(opp.size, 0.0)
             + DEVICE_CTR.get(opp.user.device_type, 0.0) + 1.3 * self.affinity(opp, c)
             + campaign_quality(c.id) + opp.user.propensity)
        return sigmoid(x)

    def cvr(self, opp: Opportunity, c: Campaign) -> float:
        return sigmoid(-2.0 + 0.8 * self.affinity(opp, c) + 0.5 * opp.publisher.quality)

    # -- the stream ------------------------------------------------------------------------

    def opportunity(self, rng: random.Random, region: str, request_id: str | None = None) -> Opportunity:
        pubs, users = self._by_region[region]
        p = rng.choice(pubs)
        u = rng.choice(users)
        fmt, size = rng.choice(p.placements)
        median = math.exp(p.price_mu + FORMAT_PRICE[fmt])
        competing = math.exp(rng.gauss(p.price_mu + FORMAT_PRICE[fmt] + 0.12 * len(u.segments), 0.45))
        gdpr = region == "eu-west"
        return Opportunity(
            request_id=request_id or uuid.UUID(int=rng.getrandbits(128)).hex, region=region,
            publisher=p, user=u, fmt=fmt, size=size, floor=round(median * p.floor_ratio, 2),
            at=1 if rng.random() < 0.7 else 2, tmax=rng.choice([80, 100, 120, 150]),
            gdpr=gdpr, consent=gdpr and rng.random() < 0.85, coppa=rng.random() < 0.01,
            lmt=p.kind == "app" and rng.random() < 0.08, competing=competing,
        )


def resolve(bid: float, competing: float, floor: float, at: int) -> tuple[bool, float]:
    """(won, clearing price CPM) for our bid against the market; ties go to the market."""
    if bid < floor or bid <= competing:
        return False, 0.0
    if at == 1:
        return True, bid
    return True, min(bid, max(competing, floor) + 0.01)
