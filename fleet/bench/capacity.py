"""Capacity of a region against a no-op Serve app, through the same ingress and load generator.

Method (docs/benchmarks.md): wrk (a C load generator, outside the server processes) posts
OpenRTB bodies with unique ids to one app at a paced offered rate, stepping the rate up until a
step fails; a step passes when the achieved rate is at least 90% of the offered one, p99 is
under the SLO, there are no errors and the bidder reports no late answers. Capacity is the
highest passing achieved rate; then each app runs at 50% of its own capacity for the latency
figures. The noop app and the region run side by side in the same Ray instance, in one run, so
only their ratio is quoted.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import msgspec

from fleet.bench import cpu
from fleet.obs import histogram

from fleet.sim.traffic import RequestFactory

LUA = Path(__file__).with_name("wrk_openrtb.lua")


@dataclass
class Step:
    offered: float
    achieved: float
    p50_ms: float
    p99_ms: float
    errors: int
    late: int
    passed: bool
    requests: int = 0


def ensure_wrk() -> str:
    exe = shutil.which("wrk")
    if exe is None:
        from fleet.bootstrap import apt_install

        apt_install("wrk")
        exe = shutil.which("wrk")
    return exe


def write_bodies(region: str, n: int, seed: int = 11) -> Path:
    """Request bodies, one per line, with the id replaced by a placeholder for wrk to fill."""
    factory = RequestFactory(region, seed)
    fd, name = tempfile.mkstemp(prefix=f"bodies-{region}-", suffix=".jsonl")
    with os.fdopen(fd, "w") as fh:
        for _ in range(n):
            req = factory.request()
            req["id"] = "__ID__"
            fh.write(msgspec.json.encode(req).decode() + "\n")
    return Path(name)


BODIES = 4000  # distinct bid requests wrk cycles through (~3,900 users)
# The closed-loop saturation step's connections: below the ingress's bid limits (16 in flight per
# replica and 4 queued, fleet.runtime.haproxy_shim.Limits), so it measures bids served, not
# HAProxy's overload answers to connections beyond them (as `fleet bench cost` does).
SATURATION_CONNS = 8


def _stage_counts(base: str, prefix: str | None) -> dict:
    if prefix is None:
        return {}
    stats = httpx.get(f"{base}{prefix}/stats", timeout=5).json()
    out = {**stats.get("latency", {}), **stats.get("loop_lag", {})}  # the loop's lag beside the stages
    if stats.get("cache") is not None:  # and the cache shards' loops, where lookups are answered
        shards = httpx.get(f"{base}{prefix}/cache", timeout=5).json().get("shards", [])
        for key in ("loop_lag", "gc0", "gc1", "gc2"):  # summed over the shards
            lags = [s["loop_lag"][key] for s in shards if s.get("loop_lag", {}).get(key)]
            if lags:
                out[f"shard_{key}"] = [sum(col) for col in zip(*lags)]
    return out


CACHE_COUNTS = ("hit", "near_hit", "miss", "timeout", "error", "near_refresh")


def _cache_counts(base: str, prefix: str | None) -> dict[str, int]:
    """The ingress's cache outcome counters (empty for an app without a cache)."""
    if prefix is None:
        return {}
    cache = httpx.get(f"{base}{prefix}/stats", timeout=5).json().get("cache") or {}
    return {k: int(cache.get(k, 0)) for k in CACHE_COUNTS} if cache else {}


def cache_delta(after: dict[str, int], before: dict[str, int]) -> dict:
    """Lookups over a step by outcome, with the share the near-cache answered."""
    if not after:
        return {}
    d = {k: after[k] - before.get(k, 0) for k in after}
    looked = d["hit"] + d["miss"] + d["timeout"] + d["error"]
    return {**d, "lookups": looked, "near_hit_rate": round(d["near_hit"] / looked, 4) if looked else None,
            "default_rate": round((looked - d["hit"]) / looked, 4) if looked else None}


PARTNER_COUNTS = ("eligible", "called", "in_time", "late", "participating", "won")


def _partner_counts(base: str, prefix: str | None) -> dict:
    """The region's per-partner counters (``/stats`` ``partners``), none for an app without partners."""
    if prefix is None:
        return {}
    rows = httpx.get(f"{base}{prefix}/stats", timeout=5).json().get("partners") or {}
    return {pid: {k: row.get(k, 0) for k in PARTNER_COUNTS} for pid, row in rows.items()}


def _late(base: str, prefix: str | None) -> int:
    if prefix is None:
        return 0
    stats = httpx.get(f"{base}{prefix}/stats", timeout=5).json()["bidder"]
    return int(stats.get("late_suppressed", 0))


def wrk_step(wrk: str, url: str, bodies: Path, rate: float, seconds: float, connections: int,
             base: str, stats_prefix: str | None, slo_ms: float) -> Step:
    delay_ms = 0 if rate == float("inf") else max(0, int(round(connections * 1000.0 / rate)))
    late0 = _late(base, stats_prefix)
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "2s", "-s", str(LUA), url,
         "--", str(bodies), str(delay_ms), uuid.uuid4().hex[:8]],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    late = _late(base, stats_prefix) - late0
    achieved = r["requests"] / (r["duration_us"] / 1e6)
    errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]
    p99 = r["p99_us"] / 1000.0
    passed = achieved >= 0.9 * rate and p99 <= slo_ms and errors == 0 and late == 0
    return Step(rate, round(achieved, 1), r["p50_us"] / 1000.0, p99, errors, late, passed, int(r["requests"]))


def describe(s: Step) -> str:
    return (f"  offered {s.offered:8.0f}/s  achieved {s.achieved:8.0f}/s  p50 {s.p50_ms:6.2f} ms  "
            f"p99 {s.p99_ms:6.2f} ms  errors {s.errors}  late {s.late}  {'ok' if s.passed else 'FAIL'}")


def find_capacity(run_step, start: float, factor: float = 1.4, refine: int = 3,
                  limit: float = 50_000, log=print) -> tuple[float, list[Step]]:
    """Step up geometrically until a step fails, then bisect between the last pass and fail.

    A failing step is run once more before it counts: on two shared cores a single background
    stall can push one step's p99 over the SLO, and one noisy step should not end the search.
    """
    steps: list[Step] = []

    def confirmed(rate: float) -> Step:
        s = run_step(rate)
        steps.append(s)
        log(describe(s))
        if not s.passed:
            s = run_step(rate)
            steps.append(s)
            log(describe(s) + "  (retry)")
        return s

    rate, good, bad = start, None, None
    while rate <= limit:
        s = confirmed(rate)
        if s.passed:
            good = s.offered
            rate *= factor
        else:
            bad = s.offered
            break
    if good is not None and bad is not None:
        for _ in range(refine):
            mid = (good + bad) / 2
            s = confirmed(mid)
            good, bad = (mid, bad) if s.passed else (good, mid)
    capacity = max((s.achieved for s in steps if s.passed), default=0.0)
    return capacity, steps


def collector_pauses(counts: dict[str, list[int]]) -> dict[str, dict]:
    """The garbage collector's pauses over a whole run, by generation (the ingress's ``gc0``..
    and the shards' ``shard_gc0``..): count, p50 and the largest (bucket bound)."""
    return {k: {"n": sum(v), "p50_ms": histogram._ms(histogram.quantile(v, 0.5)),
                "max_ms": histogram._ms(histogram.quantile(v, 1.0))}
            for k, v in sorted(counts.items()) if k.startswith(("gc", "shard_gc")) and sum(v)}


PARTNERS_ROLE = "python:fleet.sim.partners"  # the simulated demand partners' process (cpu.role_of)


def cpu_summary(results: dict, apps: dict[str, str]) -> dict:
    """Per target and phase: the CPU per request of its own app's replicas (``ingress_us``),
    of every process but the load generator and the simulated partners (``total_us``), and of
    the partners apart where they ran (``partners_us``: an external bidder's CPU, not the fleet's).
    ``apps``: label -> Serve app."""
    out = {}
    for label, res in results.items():
        phases = res.get("cpu_us_per_request")
        if phases and label in apps:
            out[label] = {ph: {"ingress_us": cpu.app_share(by_role, apps[label]),
                               "total_us": cpu.total(by_role, ("wrk", "kernel", PARTNERS_ROLE)),
                               **({"partners_us": by_role[PARTNERS_ROLE]} if PARTNERS_ROLE in by_role else {})}
                          for ph, by_role in phases.items()}
    return out


def _median_round(runs: list[dict]) -> dict:
    """One target's figures over rounds: the round of median capacity, with the medians of
    capacity and saturation and every round kept under ``rounds``."""
    if len(runs) == 1:
        return runs[0]
    mid = sorted(runs, key=lambda r: r["capacity_rps"])[len(runs) // 2]
    out = {**mid, "capacity_rps": statistics.median(r["capacity_rps"] for r in runs),
           "saturation_rps": statistics.median(r["saturation_rps"] for r in runs), "rounds": runs}
    if all("cpu_us_per_request" in r for r in runs):  # per role and phase, the median over rounds
        out["cpu_us_per_request"] = {
            phase: cpu.ranked({role: statistics.median(r["cpu_us_per_request"][phase].get(role, 0.0) for r in runs)
                               for role in {k for r in runs for k in r["cpu_us_per_request"][phase]}})
            for phase in runs[0]["cpu_us_per_request"]}
    return out


def run_capacity(base: str, targets: dict[str, str | None], region: str, *, slo_ms: float,
                 step_s: float, connections: int, start_rate: float, out: Path, log=print,
                 meta: dict | None = None, rounds: int = 1, apps: dict[str, str] | None = None,
                 slo_by_target: dict[str, float] | None = None) -> dict:
    """``targets``: label -> (route prefix, prefix whose /stats counts late answers, or None).

    The first target is the reference (the noop app), the last the system under test; any in
    between are measured the same way (a variant to compare with, e.g. the region without its
    cache). With ``rounds`` > 1 every target is measured that many times, the order of the
    non-reference targets reversed every other round so drift hits both alike; each target's
    figures are the medians, and the ratios of each round are kept (``ratios_per_round``).
    ``apps`` (label -> Serve app name) names whose replicas are each target's ingress, for the
    CPU per request summary (``cpu_per_request``). ``slo_by_target``: a target's own p99 limit
    in place of ``slo_ms`` (the region calling partners may add their cutoff to its answers).
    """
    wrk = ensure_wrk()
    bodies = write_bodies(region, BODIES)
    per_round: list[dict] = []
    labels = list(targets)
    try:
        for rnd in range(rounds):
            order = labels[:1] + (labels[1:] if rnd % 2 == 0 else labels[:0:-1])
            if rounds > 1:
                log(f"round {rnd + 1} of {rounds}")
            per_round.append(_one_round(wrk, bodies, base, {k: targets[k] for k in order}, slo_ms, step_s,
                                        connections, start_rate, log, slo_by_target or {}))
    finally:
        bodies.unlink(missing_ok=True)
    results = {k: _median_round([r[k] for r in per_round]) for k in labels}
    ref, sut = results[labels[0]], results[labels[-1]]
    doc = {
        "benchmark": "capacity",
        "region": region,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "method": {"generator": "wrk -t1 paced by delay()", "connections": connections,
                   "saturation_connections": min(connections, SATURATION_CONNS),
                   "step_s": step_s, "slo_p99_ms": slo_ms, "pass": "achieved>=90% offered, p99<=SLO, 0 errors, 0 late",
                   **({"slo_p99_ms_by_target": slo_by_target} if slo_by_target else {}),
                   "rounds": rounds},
        "reference": labels[0],
        "results": results,
        "ratio_capacity": round(sut["capacity_rps"] / ref["capacity_rps"], 3) if ref["capacity_rps"] else None,
        "ratio_saturation": round(sut["saturation_rps"] / ref["saturation_rps"], 3),
        "ratios_capacity": {k: round(v["capacity_rps"] / ref["capacity_rps"], 3) if ref["capacity_rps"] else None
                            for k, v in results.items()},
        **({"ratios_per_round": [{k: round(r[k]["capacity_rps"] / r[labels[0]]["capacity_rps"], 3)
                                  if r[labels[0]]["capacity_rps"] else None for k in labels} for r in per_round]}
           if rounds > 1 else {}),
        "cpu_per_request": cpu_summary(results, apps or {}),
        **(meta or {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


def _one_round(wrk, bodies, base: str, targets: dict, slo_ms: float, step_s: float, connections: int,
               start_rate: float, log, slo_by_target: dict[str, float]) -> dict:
    results: dict = {}
    sat_conns = min(connections, SATURATION_CONNS)
    for label, (prefix, stats_prefix) in targets.items():
        url = f"{base}{prefix}/openrtb2/bid"
        log(f"{label}: {url}")

        def step(rate, seconds=step_s, _url=url, _sp=stats_prefix, _slo=slo_by_target.get(label, slo_ms)):
            conns = sat_conns if rate == float("inf") else connections
            return wrk_step(wrk, _url, bodies, rate, seconds, conns, base, _sp, _slo)

        def step_cpu(rate):
            """A step with the CPU each request took, by process role."""
            before = cpu.snapshot()
            s = step(rate)
            return s, cpu.per_request(before, cpu.snapshot(), s.requests)

        first = _stage_counts(base, stats_prefix)
        # Warm-up, not recorded: one pass over every body, so a region with a cache is measured
        # with its users looked up once (its steady state), not while every lookup is a first miss.
        step(start_rate, max(step_s, BODIES / start_rate))
        capacity, steps = find_capacity(step, start_rate, log=log)
        before, cache0 = _stage_counts(base, stats_prefix), _cache_counts(base, stats_prefix)
        half, half_cpu = step_cpu(capacity / 2) if capacity else (None, {})
        stages = histogram.summary(histogram.delta(_stage_counts(base, stats_prefix), before))
        lookups = cache_delta(_cache_counts(base, stats_prefix), cache0)
        if half is not None:
            log(f"  at 50% ({capacity / 2:.0f}/s): p50 {half.p50_ms:.2f} ms  p99 {half.p99_ms:.2f} ms")
            if lookups:
                log(f"    lookups {lookups['lookups']}: near-cache {lookups['near_hit_rate']}, "
                    f"defaults {lookups['default_rate']}, background re-reads {lookups['near_refresh']}")
            for name, st in stages.items():
                log(f"    stage {name:<11} p50 {st['p50_ms']} ms  p99 {st['p99_ms']} ms  (n={st['n']})")
        sat, sat_cpu = step_cpu(float("inf"))  # closed loop, no pacing: the saturation throughput
        log(f"  saturation (closed loop, {sat_conns} connections): {sat.achieved:.0f}/s  "
            f"p50 {sat.p50_ms:.2f} ms  p99 {sat.p99_ms:.2f} ms")
        for name, by_role in (("50%", half_cpu), ("saturation", sat_cpu)):
            top = ", ".join(f"{r} {us:.0f}" for r, us in list(by_role.items())[:6])
            log(f"  CPU per request at {name}: {cpu.total(by_role):.0f} us ({top})")
        pauses = collector_pauses(histogram.delta(_stage_counts(base, stats_prefix), first))
        for name, st in pauses.items():
            log(f"  whole run {name:<9} n={st['n']}  p50 {st['p50_ms']} ms  max {st['max_ms']} ms")
        results[label] = {
            "capacity_rps": capacity,
            "saturation_rps": sat.achieved,
            "half_load": asdict(half) if half else None,
            "half_load_stages": stages,
            "half_load_lookups": lookups,
            "collector_pauses": pauses,
            **({"partners": parts} if (parts := _partner_counts(base, stats_prefix)) else {}),
            "cpu_us_per_request": {"half_load": half_cpu, "saturation": sat_cpu},
            "steps": [asdict(s) for s in steps],
        }
    return results
