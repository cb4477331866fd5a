"""A digest of everything the in-process bid path answers, to show that a change made for cost
changed no figure: run it against a clean export of each tree and compare the digests.

Every region's bidder (ctr/v1 model, a fixed notice key) answers the same 3,000 simulated requests
each (every other one asking for gzip), under clocks that cannot make a decision differ (the
wall clock fixed, the stage clock advancing 0.1 us a reading, so no deadline is ever near) and
fixed bid ids. The digest covers each answer's status, reason and (unzipped) body with its signed
notice URLs, then the bidder's counters and its budget's figures.

    PYTHONHASHSEED=0 PYTHONPATH=<export of tree A> python fleet/bench/cost_identical.py
    PYTHONHASHSEED=0 PYTHONPATH=<export of tree B> python fleet/bench/cost_identical.py
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import time

T_WALL = 1_800_000_000.0


def digest(requests: int = 3000) -> dict:
    _tick = itertools.count()
    time.perf_counter = lambda: next(_tick) * 1e-7  # before the bid path binds it
    time.monotonic = lambda: 1000.0
    import msgspec

    import fleet
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.ledger.signing import NoticeSigner
    from fleet.ml.scorer import load_scorer
    from fleet.pipeline.bidder import RegionBidder
    from fleet.sim.traffic import RequestFactory

    regions = load_regions()
    catalog = load_catalog(regions.defaults.catalog)
    out: list = []
    for region in regions.regions:
        b = RegionBidder(region, regions, catalog, scorer=load_scorer("ctr/v1", "onnx-cpu"),
                         signer=NoticeSigner({"k0": b"0" * 32}, clock=lambda: T_WALL), clock=lambda: T_WALL)
        b.ids.tag = "fixed"
        factory = RequestFactory(region, seed=5)
        for i in range(requests):
            a = b.bid(msgspec.json.encode(factory.request()), version="2.6", accept_encoding="gzip" if i % 2 else None)
            body = gzip.decompress(a.body) if a.headers.get("content-encoding") == "gzip" else a.body
            out.append((a.status, a.reason, body.decode()))
        out.append(sorted(b.stats.items()))
        out.append(sorted((k, v) for k, v in vars(b.budget).items() if isinstance(v, (int, float))))
    text = json.dumps(out, default=str)
    return {"tree": str(fleet.__file__).rsplit("/fleet/", 1)[0], "answers": requests * len(regions.regions),
            "sha256": hashlib.sha256(text.encode()).hexdigest()}


if __name__ == "__main__":
    print(json.dumps(digest()))
