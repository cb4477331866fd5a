"""The catalog model: campaigns (line items) with their targeting and creatives.

A campaign here is the unit that bids: it has a budget, a flight, a bid strategy and targeting;
its creatives are what can be served into an impression of the right format and size. Empty
targeting lists mean "any". Loading a catalog (a file, or a synthetic one) is ``catalog.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

FORMATS = ("banner", "video", "native", "audio")


class Creative(msgspec.Struct, frozen=True):
    id: str
    format: Literal["banner", "video", "native", "audio"]
    w: int = 0
    h: int = 0
    duration_s: int = 15
    mime: str = "video/mp4"
    cat: list[str] = []
    attr: list[int] = []
    bundle: str | None = None  # the advertised app, matched against the request's bapp
    title: str = ""
    image_url: str = ""
    click_url: str = "https://advertiser.example/landing"
    media_url: str = "https://cdn.advertiser.example/media.mp4"


class FrequencyCap(msgspec.Struct, frozen=True):
    count: int
    window_s: int


class Targeting(msgspec.Struct, frozen=True):
    countries: list[str] = []
    device_types: list[int] = []
    os: list[str] = []
    formats: list[str] = []
    domains: list[str] = []  # site domains or app bundles allowed (empty: any)
    domains_deny: list[str] = []
    deals: list[str] = []  # when set, the campaign bids only into these deals
    hours_utc: list[int] = []  # dayparting (empty: all day)
    days_utc: list[int] = []  # 0 = Monday
    segments: list[str] = []  # any of these user segments (needs user-level consent)
    publishers_deny: list[str] = []


class Strategy(msgspec.Struct, frozen=True):
    goal: Literal["cpm", "cpc", "cpa"] = "cpm"
    base_cpm: float = 1.0  # rule price, fleet currency per mille
    max_bid: float = 5.0  # hard cap, fleet currency per mille
    target_cpc: float | None = None
    target_cpa: float | None = None


class Campaign(msgspec.Struct, frozen=True):
    id: str
    advertiser: str
    adomain: list[str]
    budget_daily: float
    creatives: list[Creative]
    strategy: Strategy = Strategy()
    targeting: Targeting = Targeting()
    flight_start: dt.date | None = None
    flight_end: dt.date | None = None
    freq_cap: FrequencyCap | None = None
    cat: list[str] = []
    # EU DSA transparency (fleet/pipeline/dsa.py): on whose behalf the ad runs and who pays for it;
    # without both the campaign does not bid where a request requires transparency
    advertiser_name: str = ""
    payer_name: str = ""

    def in_flight(self, today: dt.date) -> bool:
        return (self.flight_start is None or self.flight_start <= today) and (
            self.flight_end is None or today <= self.flight_end
        )
