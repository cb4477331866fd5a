"""Bids from the in-process bidder and the notices an exchange would send for them, without a
running fleet: the input of the ledger's tests and benchmark (a harness over the fleet's own bid
path, so not in ``fleet.sim``).

``outcome(rng, bid)`` decides what the exchange says about one bid, as ``[(kind, price)]`` with
kind ``win``, ``bill`` or ``loss``; each becomes that notice URL's query, macros substituted as
the simulated exchanges do (``fleet.sim.notices.substitute``, loss reason 102).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from urllib.parse import urlsplit

from fleet.ledger.events import Event
from fleet.sim.notices import substitute
from fleet.sim.traffic import RequestFactory

URL_OF = {"win": "nurl", "bill": "burl", "loss": "lurl"}


def bids_and_notices(region: str, n: int, seed: int, signer, tag: str,
                     outcome: Callable[[random.Random, dict], list[tuple[str, float]]]
                     ) -> tuple[list[Event], list[tuple[str, str]], int]:
    """(the bid path's events, [(kind, query)] notices, requests answered with a bid)."""
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.pipeline.bidder import RegionBidder

    regions = load_regions()
    bidder = RegionBidder(region, regions, load_catalog(regions.defaults.catalog), signer=signer)
    f, rng = RequestFactory(region, seed), random.Random(seed)
    events: list[Event] = []
    notices: list[tuple[str, str]] = []
    answered = 0
    for i in range(n):
        req = f.request()
        req["id"] = f"{tag}-{seed}-{i}"
        a = bidder.bid(json.dumps(req).encode(), version="2.6")
        events.extend(a.ledger)
        if a.status != 200:
            continue
        answered += 1
        for sb in json.loads(a.body)["seatbid"]:
            for b in sb["bid"]:
                for kind, price in outcome(rng, b):
                    url = substitute(b[URL_OF[kind]], auction_id=req["id"], imp_id=b["impid"], price=price,
                                     loss=102, min_to_win=price)
                    notices.append((kind, urlsplit(url).query))
    return events, notices, answered
