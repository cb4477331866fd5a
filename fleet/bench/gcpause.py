"""What a full garbage collection costs a serving process, with and without the start-up heap
frozen (``fleet.runtime.heap.freeze_startup_heap``).

Each variant runs in a fresh interpreter that imports what a region replica imports (Ray, Serve,
numpy, ONNX Runtime, the bid path), builds the region's bidder, optionally freezes, then serves
bid requests in-process while a ``gc.callbacks`` hook times every collection; at the end one full
collection is timed directly. The reference is the same process without the freeze, same run,
rounds interleaved. (Serve already freezes its replicas' start-up heap; the figure is why the
cache shards, plain actors on the request path, do it too.)
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _child(freeze: bool, requests: int, region: str) -> dict:
    import msgspec

    import fleet.serve.region_app  # noqa: F401  (what a replica has imported before serving)
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.pipeline.bidder import RegionBidder
    from fleet.runtime.heap import freeze_startup_heap
    from fleet.sim.traffic import RequestFactory

    regions = load_regions()
    bidder = RegionBidder(region, regions, load_catalog(regions.defaults.catalog))
    factory = RequestFactory(region, seed=5)
    bodies = [msgspec.json.encode(factory.request()) for _ in range(2_000)]
    tracked = len(gc.get_objects())
    frozen = freeze_startup_heap() if freeze else 0
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    for i in range(requests):
        bidder.bid(bodies[i % len(bodies)], version="2.6")
    path_us = (time.perf_counter() - t0) / requests * 1e6
    gc.callbacks.remove(on_gc)
    t0 = time.perf_counter()
    gc.collect()
    full_ms = (time.perf_counter() - t0) * 1e3
    by_gen = {}
    for g in (0, 1, 2):
        d = sorted(p for gen, p in pauses if gen == g)
        by_gen[f"gen{g}"] = {"n": len(d), "p50_ms": round(d[len(d) // 2] * 1e3, 4) if d else None,
                             "max_ms": round(d[-1] * 1e3, 4) if d else None}
    return {"frozen": freeze, "tracked_at_start": tracked, "frozen_objects": frozen,
            "full_collection_ms": round(full_ms, 3), "bid_path_us": round(path_us, 2), "collections": by_gen}


def run_gc_bench(out: Path, requests: int = 20_000, rounds: int = 3, region: str = "us-east", log=print) -> dict:
    runs: dict[str, list[dict]] = {"unfrozen": [], "frozen": []}
    for r in range(rounds):
        for kind in ("unfrozen", "frozen") if r % 2 == 0 else ("frozen", "unfrozen"):
            res = subprocess.run([sys.executable, "-m", "fleet.bench.gcpause", kind, str(requests), region],
                                 capture_output=True, text=True, check=True)
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            runs[kind].append(doc)
            c = doc["collections"]
            log(f"  {kind:<8} tracked {doc['tracked_at_start']:>7,}  full collection {doc['full_collection_ms']:8.3f} ms  "
                f"while serving: gen2 n={c['gen2']['n']} max {c['gen2']['max_ms']} ms, gen0 p50 {c['gen0']['p50_ms']} ms  "
                f"bid path {doc['bid_path_us']} us")
    med = {k: statistics.median(d["full_collection_ms"] for d in v) for k, v in runs.items()}
    path = {k: statistics.median(d["bid_path_us"] for d in v) for k, v in runs.items()}
    doc = {"benchmark": "gc", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "python": sys.version.split()[0], "requests": requests,
           "rounds": rounds, "full_collection_ms": med, "bid_path_us": path,
           "ratio_full_collection_frozen_vs_unfrozen": round(med["frozen"] / med["unfrozen"], 4),
           "ratio_bid_path_frozen_vs_unfrozen": round(path["frozen"] / path["unfrozen"], 3), "runs": runs}
    log(f"full collection: {med['unfrozen']:.1f} ms unfrozen, {med['frozen']:.2f} ms frozen "
        f"(ratio {doc['ratio_full_collection_frozen_vs_unfrozen']}); bid path ratio {doc['ratio_bid_path_frozen_vs_unfrozen']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":  # one variant, in its own interpreter (run_gc_bench starts it)
    kind, n, reg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(_child(kind == "frozen", n, reg)))
