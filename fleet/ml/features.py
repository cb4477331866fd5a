"""The model's features: one function from (bid request, impression, campaign) to a float32 row.

Training and serving call the same function on the same decoded ``BidRequest``: the training set
is built by turning market opportunities into OpenRTB requests and decoding them, so there is no
second implementation to drift. Missing or forbidden values are NaN (XGBoost and the exported
graphs route NaN down each node's default branch): user segments are NaN when privacy makes the
request contextual only.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from fleet.campaigns.model import Campaign, Creative
from fleet.openrtb.inventory import Inventory, inventory
from fleet.openrtb.model import BidRequest, Imp
from fleet.pipeline.enrichment import UserContext

# The segment taxonomy the DMP sends (user.data[].segment[].id); one indicator each.
SEGMENTS = ("sports-fan", "runner", "fashion", "traveller", "gamer", "news-junkie",
            "auto-intender", "shopper", "music-lover", "foodie")
FORMATS = {"banner": 0.0, "video": 1.0, "native": 2.0, "audio": 3.0}
OSES = {"ios": 0.0, "android": 1.0, "windows": 2.0, "macos": 3.0}
GOALS = {"cpm": 0.0, "cpc": 1.0, "cpa": 2.0}

FEATURES = (
    "format", "width", "height", "device_type", "os", "is_app", "publisher_bucket", "floor_usd",
    "n_segments", "campaign_bucket", "campaign_iab", "campaign_goal", "creative_bucket",
    *(f"seg_{s}" for s in SEGMENTS),
)
N_FEATURES = len(FEATURES)
NAN = float("nan")


@lru_cache(maxsize=65_536)
def bucket(text: str | None, size: int = 4096) -> float:
    """A stable small integer for an id (trees split on it; a hash keeps it stable across runs).
    Memoised: campaign, creative and publisher ids recur on every request, and a hash per
    candidate row was a visible part of building the rows."""
    if not text:
        return NAN
    return float(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % size)


def iab_tier1(cats: list[str]) -> float:
    for c in cats:
        head = c.split("-")[0]
        if head.startswith("IAB") and head[3:].isdigit():
            return float(int(head[3:]))
    return NAN


class FeatureBuilder:
    """Per-request parts are computed once; ``row`` adds the campaign's part."""

    __slots__ = ("base", "seg")

    def __init__(self, req: BidRequest, imp: Imp, user: UserContext, floor_usd: float,
                 inv: Inventory | None = None):
        """``inv``: the request's publisher and domain, when the caller has them already."""
        fmts = imp.formats()
        fmt = fmts[0] if fmts else "banner"
        w = h = NAN
        if imp.banner is not None:
            sizes = imp.banner.sizes()
            if sizes:
                w, h = float(sizes[0][0]), float(sizes[0][1])
        elif imp.video is not None and imp.video.w and imp.video.h:
            w, h = float(imp.video.w), float(imp.video.h)
        dev = req.device
        pub = (inventory(req) if inv is None else inv).publisher
        self.base = [
            FORMATS.get(fmt, NAN), w, h,
            float(dev.devicetype) if dev is not None and dev.devicetype is not None else NAN,
            OSES.get((dev.os or "").lower(), 4.0) if dev is not None and dev.os else NAN,
            1.0 if req.app is not None else 0.0,
            bucket(pub), floor_usd,
            NAN if user.contextual_only else float(len(user.segments)),
        ]
        if user.contextual_only:
            self.seg = [NAN] * len(SEGMENTS)
        else:
            have = set(user.segments)
            self.seg = [1.0 if s in have else 0.0 for s in SEGMENTS]

    def row(self, c: Campaign, cr: Creative) -> list[float]:
        return [*self.base, bucket(c.id), iab_tier1(c.cat or cr.cat), GOALS[c.strategy.goal],
                bucket(cr.id), *self.seg]


def matrix(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), N_FEATURES)
