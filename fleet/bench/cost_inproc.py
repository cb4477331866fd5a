"""The in-process bid path's CPU per request, and its parts, as a Serve replica runs it: the
region's bidder with the ctr/v1 model and a notice signer (the fleet's own settings), fresh
request ids every round (a repeated id is a duplicate, refused before any work).

CPU time (``time.process_time``; parts by ``time.thread_time``), best of several rounds, so a
busy shared machine's waiting does not count. Parts are timed in their context (cold caches
between them, as in the replica), not in a tight loop of their own, so they read higher than a
micro-benchmark of each. To compare trees: run it with ``PYTHONPATH`` at a clean export of each.

    python -m fleet.bench.cost_inproc [--requests 3000] [--rounds 5] [--region us-east]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import msgspec

PARTS = {  # module attribute -> what it is (the bid path calls each through its module)
    "fleet.pipeline.bidder:build_response": "respond: the BidResponse with markup and notice URLs",
    "fleet.pipeline.respond:notice_urls": "respond: a bid's four signed notice URLs",
    "fleet.pipeline.bidder:model_prices_many": "pricing: values, shading against the win-rate model",
    "fleet.pipeline.request:Pending.rows": "pricing: the candidates' feature rows",
}


def _wrap(spent: Counter, calls: Counter) -> None:
    import importlib

    for target in PARTS:
        mod_name, attr = target.split(":")
        owner = importlib.import_module(mod_name)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        fn = getattr(owner, name)

        def timed(*a, _fn=fn, _key=target, **k):
            t = time.thread_time()
            try:
                return _fn(*a, **k)
            finally:
                spent[_key] += time.thread_time() - t
                calls[_key] += 1

        setattr(owner, name, timed)


def run(requests: int = 3000, rounds: int = 5, region: str = "us-east", model: str = "ctr/v1",
        parts: bool = True) -> dict:
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.ledger.signing import NoticeSigner
    from fleet.ml.scorer import load_scorer
    from fleet.pipeline.bidder import RegionBidder
    from fleet.sim.traffic import RequestFactory

    spent: Counter = Counter()
    calls: Counter = Counter()
    if parts:
        _wrap(spent, calls)
    regions = load_regions()
    bidder = RegionBidder(region, regions, load_catalog(regions.defaults.catalog),
                          scorer=load_scorer(model, "onnx-cpu"), signer=NoticeSigner({"bench": b"b" * 32}))
    factory = RequestFactory(region, seed=11)
    sets = [[msgspec.json.encode(factory.request()) for _ in range(requests)] for _ in range(rounds + 1)]
    for body in sets[-1][: requests // 5]:  # warm-up
        bidder.bid(body, version="2.6")
    best, best_parts, bids = float("inf"), {}, 0
    for r in range(rounds):
        spent.clear()
        calls.clear()
        t0 = time.process_time()
        n = sum(bidder.bid(body, version="2.6").status == 200 for body in sets[r])
        us = (time.process_time() - t0) / requests * 1e6
        if us < best:
            best, bids = us, n
            best_parts = {k.split(":")[1]: {"us_per_request": round(v / requests * 1e6, 1),
                                            "us_per_call": round(v / calls[k] * 1e6, 1), "calls": calls[k]}
                          for k, v in spent.items()}
    return {"region": region, "model": model, "requests": requests, "answered_bid": bids,
            "bid_path_us": round(best, 1), "parts": best_parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--region", default="us-east")
    ap.add_argument("--no-parts", action="store_true", help="The path alone, without timing its parts.")
    a = ap.parse_args()
    print(json.dumps(run(a.requests, a.rounds, a.region, parts=not a.no_parts)))


if __name__ == "__main__":
    main()
