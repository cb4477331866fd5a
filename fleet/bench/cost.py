"""CPU per request by process, and by stage inside the ingress: where a bid's microseconds go.

Method (docs/benchmarks.md, "CPU per request by process"): one Ray instance holds the system
under test and the no-op app behind the same HAProxy ingress; wrk (one thread, ``connections``
closed-loop connections, the capacity bench's bodies with unique ids) drives one target at a
time. Each round measures every target at saturation (closed loop) and at half of that round's
saturation rate (paced), the targets' order reversed every other round. Around every step the
CPU time (user + system) of every process on the box is read; the difference over the step's
requests is its CPU per request. Processes are named by what they are for the fleet
(``fleet.bench.cost_roles``): the target region's ingress, each of its cache shards, its ledger
consumer, its Redis, control, the other regions' processes, HAProxy, Ray's own, the load
generator; processes that are not the fleet's (other work on a shared box) are kept apart and
out of every total.

Two scopes: ``fleet`` is the fleet as ``fleet up`` starts it (every region, control, one Redis)
with the no-op app added to the same Serve config; ``region`` is one region alone with its own
shards, ledger, control and Redis, started as ``fleet bench capacity`` starts it.

CPU per request is the robust figure on a shared 2-core box; the saturation ratio against the
no-op app is printed too (throughput moves with whatever else the box runs).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from fleet.bench import capacity
from fleet.bench.cost_roles import Labeller, by_group, fleet_total
from fleet.obs import histogram

NOOP_APP, NOOP_PREFIX = "bench-noop", "/bench-noop"


def stage_means_us(counts: dict[str, list[int]]) -> dict[str, float]:
    """Mean microseconds per request of each stage, from histogram counts (each bucket at its
    geometric middle: within ~6%). ``other`` is the total less the stages (admission, the
    answer's encoding outside respond, awaiting the loop)."""
    out = {}
    bounds = histogram.BOUNDS_S
    for stage, c in counts.items():
        n = sum(c)
        if not n or stage.startswith(("gc", "shard_", "loop_lag")):
            continue
        s = 0.0
        for i, k in enumerate(c):
            if k:
                hi = bounds[min(i, len(bounds) - 1)]
                lo = bounds[i - 1] if 0 < i <= len(bounds) - 1 else hi / 1.122
                s += k * (lo * hi) ** 0.5
        out[stage] = round(s / n * 1e6, 1)
    if "total" in out:
        staged = sum(v for k, v in out.items() if k not in ("total", "enrichment_answer"))
        out["other"] = round(max(0.0, out["total"] - staged), 1)
    return out


def _stats(base: str, prefix: str | None) -> dict:
    if prefix is None:
        return {}
    return httpx.get(f"{base}{prefix}/stats", timeout=5).json()


def measure(wrk: str, bodies: Path, base: str, prefix: str, stats_prefix: str | None, rate: float,
            seconds: float, connections: int, labeller: Labeller, slo_ms: float = 1e9) -> dict:
    """One step: wrk at ``rate`` (inf: closed loop), with every process's CPU around it."""
    st0 = _stats(base, stats_prefix)
    before = labeller.snapshot()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = capacity.wrk_step(wrk, f"{base}{prefix}/openrtb2/bid", bodies, rate, seconds, connections, base,
                          stats_prefix, slo_ms)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = labeller.snapshot()
    st1 = _stats(base, stats_prefix)
    stages = stage_means_us(histogram.delta(st1.get("latency", {}), st0.get("latency", {}))) if stats_prefix else {}
    # requests priced with others in one model call (fleet.region.pricing.LocalPricing), and those calls
    together = {k: st1.get("priced_together", {}).get(k, 0) - st0.get("priced_together", {}).get(k, 0)
                for k in ("passes", "requests")} if stats_prefix else {}
    per_proc = labeller.per_request(before, after, s.requests)
    if s.requests:  # wrk has exited by the second snapshot: its CPU is this process's children's
        wrk_s = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        per_proc["wrk"] = {"us": round(wrk_s * 1e6 / s.requests, 1), "group": "load generator"}
    return {"offered": s.offered, "rps": s.achieved, "requests": s.requests, "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms, "errors": s.errors, "late": s.late,
            "cpu_us": per_proc, "groups_us": by_group(per_proc), "fleet_us": fleet_total(per_proc),
            "stages_us": stages, "priced_together": together}


def run_rounds(base: str, targets: dict[str, tuple[str, str | None]], labellers: dict[str, Labeller],
               region: str, *, seconds: float, connections: int, rounds: int, log=print) -> dict:
    """``targets``: label -> (route prefix, prefix with /stats or None); the first is the
    reference (the no-op app). Returns every step and the medians per target and phase."""
    wrk = capacity.ensure_wrk()
    bodies = capacity.write_bodies(region, capacity.BODIES)
    labels = list(targets)
    steps: dict[str, list[dict]] = {k: [] for k in labels}
    try:
        for label in labels:
            # Warm-up, not recorded: every body twice (a user's first sight is a shard miss, its
            # second a shard hit the near-cache keeps; from the third on, the steady state).
            prefix, sp = targets[label]
            for _ in range(2 if sp else 1):
                capacity.wrk_step(wrk, f"{base}{prefix}/openrtb2/bid", bodies, float("inf"), 6, connections,
                                  base, sp, 1e9)
        for rnd in range(rounds):
            order = labels if rnd % 2 == 0 else labels[::-1]
            for label in order:
                prefix, sp = targets[label]
                sat = measure(wrk, bodies, base, prefix, sp, float("inf"), seconds, connections, labellers[label])
                half = measure(wrk, bodies, base, prefix, sp, sat["rps"] / 2, seconds, connections,
                               labellers[label])
                steps[label].append({"round": rnd + 1, "saturation": sat, "half": half})
                log(f"round {rnd + 1} {label:<10} saturation {sat['rps']:7.0f}/s fleet {sat['fleet_us']:6.0f} us/req"
                    f" | half {half['rps']:6.0f}/s p99 {half['p99_ms']:6.2f} ms fleet {half['fleet_us']:6.0f} us/req")
    finally:
        bodies.unlink(missing_ok=True)
    ref, sut = labels[0], labels[-1]
    ratios = [round(b["saturation"]["rps"] / a["saturation"]["rps"], 3)
              for a, b in zip(steps[ref], steps[sut]) if a["saturation"]["rps"]]
    return {"steps": steps, "medians": {k: medians(v) for k, v in steps.items()},
            "ratio_saturation_per_round": ratios,
            "ratio_saturation": statistics.median(ratios) if ratios else None}


def _median_map(maps: list[dict]) -> dict:
    keys = {k for m in maps for k in m}
    out = {k: round(statistics.median(m.get(k, 0.0) for m in maps), 1) for k in keys}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def medians(rounds: list[dict]) -> dict:
    """Per phase: medians over rounds of rate, p99, fleet CPU per request (with its spread: the
    lowest and highest round), and of every process, group and stage."""
    out = {}
    for phase in ("saturation", "half"):
        xs = [r[phase] for r in rounds]
        fl = [x["fleet_us"] for x in xs]
        out[phase] = {"rps": statistics.median(x["rps"] for x in xs),
                      "p99_ms": statistics.median(x["p99_ms"] for x in xs),
                      "fleet_us": round(statistics.median(fl), 1), "fleet_us_range": [min(fl), max(fl)],
                      "groups_us": _median_map([x["groups_us"] for x in xs]),
                      "cpu_us": _median_map([{k: v["us"] for k, v in x["cpu_us"].items()} for x in xs]),
                      "stages_us": _median_map([x["stages_us"] for x in xs])}
    return out


# -- launchers: the fleet as `fleet up` starts it, or one region as the capacity bench does ----


def noop_app_entry(max_ongoing: int) -> dict:
    return {"name": NOOP_APP, "route_prefix": NOOP_PREFIX, "import_path": "fleet.serve.noop_app:build_app",
            "args": {"max_ongoing_requests": max_ongoing}}


def wait_noop(base: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.post(f"{base}{NOOP_PREFIX}/openrtb2/bid", content=b"{}", timeout=2).status_code == 204:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the no-op app did not become ready")


@contextmanager
def fleet_scope(ctx, up_cmd, down_cmd, region: str, noop: bool = True):
    """The whole fleet via ``fleet up`` (fresh Redis, no burst), the no-op app added to the same
    Serve config unless ``noop`` is False (``fleet.bench.idle``: the fleet exactly as `up` starts
    it); yields (base URL, redis pid). Stops it all after."""
    import yaml

    from fleet.cli.common import serve_config
    from fleet.config import load_regions
    from fleet.runtime import local

    if local.State.load() is not None:
        raise RuntimeError("the fleet is already up: `fleet down` first (the bench starts its own)")
    cfg = serve_config("serve_config.yaml")
    if noop:
        cfg["applications"].append(noop_app_entry(load_regions().regions[region].max_ongoing_requests))
    local.STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = local.STATE_DIR / "serve_config.cost.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    try:
        ctx.invoke(up_cmd, config_path=str(path), detach=True, burst=False, fresh=True)
        state = local.State.load()
        if noop:
            wait_noop(state.http)
        os.environ.update(local.ray_env())
        import ray

        ray.init(address="auto", log_to_driver=False)
        yield state.http, state.redis_pid
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        finally:
            ctx.invoke(down_cmd)


@contextmanager
def region_scope(region: str, port: int):
    """One region alone (its shards, ledger, control, its own Redis) and the no-op app in a local
    Ray started here, as ``fleet bench capacity`` starts them; yields (base URL, redis pid)."""
    import tempfile

    from fleet.runtime import local

    os.environ.update(local.ray_env())
    # an HAProxy of a Ray stopped a moment ago (the fleet scope) may still hold its ports, and
    # the new one's manager dies at start
    local.stop_haproxy()
    time.sleep(5)
    import ray
    from ray import serve

    from fleet.config import RegionAppArgs, load_regions
    from fleet.serve import noop_app, region_app

    from fleet.cli.common import serve_config

    spec = load_regions().regions[region]
    # the region's args as serve_config.yaml deploys it (its model), on its own
    args = next(a["args"] for a in serve_config("serve_config.yaml")["applications"] if a["name"] == region)
    url, pid, proc = local.start_redis(Path(tempfile.mkdtemp(prefix="bench-cost-redis-")))
    os.environ["REDIS_URL"] = url
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"REDIS_URL": url}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(region_app.build_app(RegionAppArgs.model_validate(args)), name=region, route_prefix=spec.route_prefix,
                  blocking=False)
        serve.run(noop_app.build_app({"max_ongoing_requests": spec.max_ongoing_requests}), name=NOOP_APP,
                  route_prefix=NOOP_PREFIX, blocking=False)
        base = f"http://127.0.0.1:{port}"
        from fleet.cli.common import wait_ready

        if not wait_ready(base, [spec.route_prefix], 180):
            raise RuntimeError("region did not become ready")
        wait_noop(base)
        time.sleep(2)
        yield base, pid
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
            local.stop_haproxy()
        finally:
            proc.terminate()


def run_scope(scope: str, base: str, redis_pid: int, region: str, regions: list[str], shard_counts: dict,
              *, seconds: float, connections: int, rounds: int, log=print) -> dict:
    from fleet.config import load_regions

    prefix = load_regions().regions[region].route_prefix
    target = Labeller.connect(region, regions, shard_counts, redis_pid, app=region)
    noop = Labeller.connect(region, regions, shard_counts, redis_pid, app=NOOP_APP)
    log(f"{scope}: processes {target.describe()}")
    res = run_rounds(base, {"noop": (NOOP_PREFIX, None), region: (prefix, prefix)},
                     {"noop": noop, region: target}, region, seconds=seconds, connections=connections,
                     rounds=rounds, log=log)
    return {"scope": scope, "region": region, **res}


def document(results: dict[str, dict], *, seconds: float, connections: int, rounds: int, label: str,
             meta: dict | None = None) -> dict:
    return {"benchmark": "cost", "label": label, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count()},
            "method": {"generator": f"wrk -t1 -c{connections}", "step_s": seconds, "rounds": rounds,
                       "phases": "saturation (closed loop), then half of that round's saturation (paced)",
                       "cpu": "user+system per process over the step / requests (us); fleet_us: every fleet "
                              "process but the load generator"},
            "targets": {"fleet": ">= 0.5 saturation ratio", "region": ">= 0.6 saturation ratio",
                        "p99_half_ms": 10},
            "results": results, **(meta or {})}


def report_lines(doc: dict) -> list[str]:
    lines = []
    for scope, r in doc["results"].items():
        want = doc["targets"].get(scope)
        lines.append(f"== {scope}: saturation ratio {r['ratio_saturation']} (rounds {r['ratio_saturation_per_round']};"
                     f" target {want})")
        for label, m in r["medians"].items():
            for phase in ("saturation", "half"):
                x = m[phase]
                lines.append(f"  {label:<10} {phase:<10} {x['rps']:7.0f}/s p99 {x['p99_ms']:6.2f} ms  fleet CPU "
                             f"{x['fleet_us']:6.0f} us/req (rounds {x['fleet_us_range'][0]:.0f}-"
                             f"{x['fleet_us_range'][1]:.0f})")
                lines.append("      " + ", ".join(f"{g} {v:.0f}" for g, v in x["groups_us"].items()))
                if x["stages_us"]:
                    lines.append("      stages: " + ", ".join(f"{g} {v:.0f}" for g, v in x["stages_us"].items()))
    return lines


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
