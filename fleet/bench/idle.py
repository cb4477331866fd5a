"""What the fleet burns with no traffic at all: cores by process, over a quiet window.

``python -m fleet.bench.idle --scope fleet|region [--seconds 60] [--label L]`` (under the Ray
lock) starts the fleet as ``fleet up`` does (``fleet``, without the cost bench's no-op app) or one
region with the no-op app as ``fleet bench cost --scope region`` does (``region``), lets it settle,
sends nothing, and reads every process's CPU time (user + system) around ``windows`` equal
windows. Processes are named as ``fleet bench cost`` names them (``fleet.bench.cost_roles``);
``outside`` (other work on a shared box) is kept apart and out of the total. Writes
``bench/results/idle-<scope>[-label].json``.

Why: on two cores every fraction of a core spent on time-driven background work (control loops,
health checks, metrics export, the fleet's own periodic loops) is taken from the replicas, and
``fleet bench cost`` divides it by the request rate, where it reads as per-request cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from fleet.bench.cost_roles import LEFT_OUT, Labeller, Snapshot, cpu_seconds

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def cores(before: Snapshot, after: Snapshot, seconds: float, labeller: Labeller) -> dict[str, dict]:
    """label -> {"cores": CPU seconds per second, "group"}, largest first; under 0.0005 left out."""
    if seconds <= 0:
        return {}
    rows = {lab: {"cores": round(s / seconds, 4), "group": labeller.group(lab)}
            for lab, s in cpu_seconds(before, after).items() if s / seconds >= 0.0005}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["cores"]))


def total(rows: dict[str, dict]) -> float:
    """The fleet's cores: every row but the load generator's, the kernel's and other work's."""
    return round(sum(r["cores"] for r in rows.values() if r["group"] not in LEFT_OUT), 4)


def summarise(windows: list[dict[str, dict]]) -> dict:
    """Per label and per group the median over windows, and the fleet total's median and range."""
    labels = {lab for w in windows for lab in w}
    group_of = {lab: row["group"] for w in windows for lab, row in w.items()}
    per_label = {lab: round(statistics.median(w.get(lab, {"cores": 0.0})["cores"] for w in windows), 4)
                 for lab in labels}
    groups: dict[str, float] = {}
    for lab, c in per_label.items():
        groups[group_of[lab]] = round(groups.get(group_of[lab], 0.0) + c, 4)
    totals = [total(w) for w in windows]
    return {"cores": dict(sorted(per_label.items(), key=lambda kv: -kv[1])),
            "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "group_of": group_of,
            "total_cores": round(statistics.median(totals), 4) if totals else 0.0,
            "total_range": [min(totals), max(totals)] if totals else [0.0, 0.0]}


def measure(labeller: Labeller, seconds: float, windows: int, log=print) -> list[dict[str, dict]]:
    out = []
    step = seconds / windows
    for i in range(windows):
        before, t0 = labeller.snapshot(), time.monotonic()
        time.sleep(step)
        after, t1 = labeller.snapshot(), time.monotonic()
        w = cores(before, after, t1 - t0, labeller)
        log(f"window {i + 1}/{windows}: fleet {total(w):.3f} cores; "
            + ", ".join(f"{k} {v['cores']:.3f}" for k, v in list(w.items())[:8]))
        out.append(w)
    return out


def report_lines(doc: dict) -> list[str]:
    s = doc["summary"]
    lo, hi = s["total_range"]
    lines = [f"== idle {doc['scope']}: fleet {s['total_cores']:.3f} cores (windows {lo:.3f}-{hi:.3f})"]
    lines += [f"  {g:<48} {c:.3f}" for g, c in s["groups"].items()]
    lines += [f"    {lab:<46} {c:.4f}" for lab, c in s["cores"].items() if c >= 0.001]
    return lines


def _fleet(region: str, settle: float, seconds: float, windows: int, log) -> list[dict]:
    import click

    from fleet.bench.cost import fleet_scope
    from fleet.cli.common import regions_of, serve_config
    from fleet.cli.up import down, up
    from fleet.config import load_regions

    regions = list(regions_of(serve_config("serve_config.yaml")))
    cfg = load_regions().regions
    with click.Context(up) as ctx, fleet_scope(ctx, up, down, region, noop=False) as (_base, redis_pid):
        lab = Labeller.connect(region, regions, {r: cfg[r].cache_shards for r in regions}, redis_pid, app=region)
        import ray

        ray.shutdown()  # this driver's own traffic to the GCS and raylet is not the fleet's
        log(f"fleet: processes {lab.describe()}; settling {settle:.0f} s")
        time.sleep(settle)
        return measure(lab, seconds, windows, log)


def _region(region: str, port: int, settle: float, seconds: float, windows: int, log) -> list[dict]:
    from fleet.bench.cost import region_scope
    from fleet.config import load_regions

    cfg = load_regions().regions
    with region_scope(region, port) as (_base, redis_pid):
        lab = Labeller.connect(region, [region], {region: cfg[region].cache_shards}, redis_pid, app=region)
        log(f"region: processes {lab.describe()}; settling {settle:.0f} s")
        time.sleep(settle)
        return measure(lab, seconds, windows, log)


def recorded_env(environ) -> dict[str, str]:
    """The Ray settings a run had (what a before/after differs in); never a secret: no
    ``FLEET_*`` (notice keys, tokens) and nothing named like a token, key or password."""
    return {k: v for k, v in environ.items() if k.startswith("RAY_")
            and not any(w in k for w in ("TOKEN", "KEY", "PASSWORD", "SECRET"))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scope", choices=["fleet", "region"], default="fleet")
    ap.add_argument("--region", default="us-east")
    ap.add_argument("--seconds", type=float, default=60.0, help="Measured time, all windows together.")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--settle", type=float, default=20.0, help="Quiet time after start, not measured.")
    ap.add_argument("--port", type=int, default=8123, help="Ingress port of the region scope's own Ray.")
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv)
    run = _fleet(a.region, a.settle, a.seconds, a.windows, print) if a.scope == "fleet" else \
        _region(a.region, a.port, a.settle, a.seconds, a.windows, print)
    doc = {"benchmark": "idle", "scope": a.scope, "region": a.region, "label": a.label,
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {"cpus": os.cpu_count()},
           "method": {"seconds": a.seconds, "windows": a.windows, "settle_s": a.settle,
                      "cpu": "user+system per process over each window / its length (cores); no requests"},
           "env": recorded_env(os.environ),
           "summary": summarise(run), "windows": run}
    out = RESULTS / f"idle-{a.scope}{'-' + a.label if a.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    for line in report_lines(doc):
        print(line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
