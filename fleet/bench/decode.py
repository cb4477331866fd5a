"""What reading a request costs: the strict decode (the fast path), the tolerant pass, the whole
in-process bid path. CPU time (``time.process_time``), best of several rounds, so a busy shared
machine's waiting does not count.

    python -m fleet.bench.decode [--bodies 6000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import time

import msgspec

from fleet.campaigns.catalog import load_catalog
from fleet.config import load_regions
from fleet.openrtb import codec
from fleet.pipeline.bidder import RegionBidder
from fleet.sim.traffic import RequestFactory

REGIONS = ("us-east", "eu-west", "ap-southeast")


def _bodies(n: int) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in REGIONS:
        f = RequestFactory(r, seed=11)
        out[r] = [msgspec.json.encode(f.request()) for _ in range(n // len(REGIONS))]
    return out


def _best_us(fn, items, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for x in items:
            fn(x)
        best = min(best, (time.process_time() - t0) / len(items) * 1e6)
    return round(best, 2)


def run(n: int = 6000, rounds: int = 7) -> dict:
    by_region = _bodies(n)
    bodies = [b for bs in by_region.values() for b in bs]
    # the commonest confusion: a number sent as a string, which only the tolerant pass reads
    repaired = [b.replace(b'"at":1', b'"at":"1"').replace(b'"at":2', b'"at":"2"') for b in bodies]
    def decode(b: bytes) -> None:
        try:
            codec.decode_request(b, None, 1 << 16)
        except codec.RequestError:  # a tree without the tolerant pass: the cost of its 400
            pass

    regions = load_regions()
    catalog = load_catalog(regions.defaults.catalog)
    path = float("inf")
    for _ in range(max(1, rounds // 3)):
        spent = 0.0
        for r, bs in by_region.items():
            bidder = RegionBidder(r, regions, catalog)
            t0 = time.process_time()
            for b in bs:
                bidder.bid(b, version="2.6")
            spent += time.process_time() - t0
        path = min(path, spent / len(bodies) * 1e6)
    return {"bodies": len(bodies), "decode_strict_us": _best_us(decode, bodies, rounds),
            "decode_tolerant_us": _best_us(decode, repaired, rounds), "bid_path_us": round(path, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bodies", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    print(json.dumps(run(a.bodies, a.rounds)))


if __name__ == "__main__":
    main()
