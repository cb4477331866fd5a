"""Overload: one region offered 1x, 2x and 5x its capacity, closed and open loop, measured at
the client (issue 23; docs/benchmarks.md, "Overload: shed fast, serve on time").

Each step drives the region with wrk (``wrk_overload.lua``: the capacity benchmark's bodies, all
with ``tmax: 100``, counting answers as served, shed (``x-fleet-reason: overload``) or deadline
no-bids (``deadline``: HAProxy's or the replica's, the budget ran out), and the share of all
answers back within tmax), while a probe (aiohttp, one request at a time, ~40/s)
times single answers by kind: the served ones' and the shed ones' latency at the client. The
region's own counters over the step (``/stats``) say how many it shed itself after the queue and
how many it answered late; HAProxy's sheds are the rest of wrk's.

Capacity (1x) is the served-on-time rate of a closed loop at 16 connections (``CAPACITY_CONNS``:
the replica's concurrency when the limits were first chosen, kept fixed while they are tuned).
Open loop: Poisson-paced connections (``delay()``), enough of them that fast sheds keep the
offered rate; closed loop: 128 connections without pause, the
issue's original experiment. The box is shared: the load generator, HAProxy, the replica and its
cache shards run on the same two cores, and other work may run beside them.

    python -m fleet.bench.overload --region us-east        # bench/results/overload-us-east.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from fleet.bench import cpu
from fleet.bench.capacity import BODIES, ensure_wrk, write_bodies
from fleet.config import REPO_ROOT
from fleet.runtime.haproxy_shim import DEADLINE_REASON, OVERLOAD_REASON

LUA = Path(__file__).with_name("wrk_overload.lua")
RESULTS = REPO_ROOT / "bench" / "results"
# 1x: a closed loop at this many connections, no queue (the per-replica maxconn when the limits
# were first chosen). Fixed, so changing the limits cannot lower the bar they are measured by.
CAPACITY_CONNS = 16
COUNTS = ("requests", "shed", "late_suppressed", "answered_bid", "nobid", "arrival.ingress")


def bodies_with_tmax(region: str, tmax_ms: int) -> Path:
    src = write_bodies(region, BODIES)
    fd, name = tempfile.mkstemp(prefix=f"overload-{region}-", suffix=".jsonl")
    with open(src) as fh, os.fdopen(fd, "w") as out:
        for line in fh:
            req = json.loads(line)
            req["tmax"] = tmax_ms
            out.write(json.dumps(req, separators=(",", ":")) + "\n")
    src.unlink()
    return Path(name)


def server_counts(base: str, prefix: str) -> dict[str, int]:
    b = httpx.get(f"{base}{prefix}/stats", timeout=5).json()["bidder"]
    return {k: int(b.get(k, 0)) for k in COUNTS}


_NICE = os.getpriority(os.PRIO_PROCESS, 0)  # before ``--probe-niceness``: wrk's own


def wrk_run(wrk: str, url: str, bodies: Path, connections: int, delay_ms: float, seconds: float,
            tmax_ms: int) -> dict:
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "2s", "-s", str(LUA), url,
         "--", str(bodies), str(delay_ms), uuid.uuid4().hex[:8], str(tmax_ms)],
        check=True, capture_output=True, text=True,
        preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, _NICE)).stdout
    return json.loads(out.strip().splitlines()[-1])


async def probe(url: str, lines: list[str], seconds: float, tmax_ms: int, every_s: float = 0.025) -> dict:
    """One request at a time: each answer's latency at the client, by kind."""
    import aiohttp

    served, shed, deadline, other = [], [], [], 0
    end = time.perf_counter() + seconds
    headers = {"content-type": "application/json", "x-openrtb-version": "2.6"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as client:
        i = 0
        while time.perf_counter() < end:
            body = lines[i % len(lines)].replace("__ID__", f"probe-{uuid.uuid4().hex[:12]}", 1)
            i += 1
            t0 = time.perf_counter()
            try:
                async with client.post(url, data=body, headers=headers) as r:
                    await r.read()
                    ms = (time.perf_counter() - t0) * 1000
                    reason = r.headers.get("x-fleet-reason")
                    if reason == OVERLOAD_REASON:
                        shed.append(ms)
                    elif reason == DEADLINE_REASON:
                        deadline.append(ms)
                    elif r.status in (200, 204):
                        served.append(ms)
                    else:
                        other += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                other += 1
            await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - t0)))
    return {"served": _dist(served, tmax_ms), "shed": _dist(shed, tmax_ms), "deadline": _dist(deadline, tmax_ms),
            "other": other}


def _dist(xs: list[float], tmax_ms: int) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    q = lambda p: round(xs[min(len(xs) - 1, int(p * len(xs)))], 3)  # noqa: E731
    return {"n": len(xs), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(xs[-1], 3),
            "on_time": round(sum(x <= tmax_ms for x in xs) / len(xs), 4)}


def step(wrk: str, base: str, prefix: str, bodies: Path, label: str, connections: int, delay_ms: float,
         seconds: float, tmax_ms: int, offered: float | None = None) -> dict:
    url = f"{base}{prefix}/openrtb2/bid"
    lines = bodies.read_text().splitlines()
    before = server_counts(base, prefix)
    cpu0 = cpu.snapshot()
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(w=wrk_run(wrk, url, bodies, connections, delay_ms, seconds, tmax_ms)))
    t.start()
    p = asyncio.run(probe(url, lines, max(1.0, seconds - 1.0), tmax_ms))
    t.join()
    cpu1 = cpu.snapshot()
    after = server_counts(base, prefix)
    w = box["w"]
    dur = w["duration_us"] / 1e6
    srv = {k: after[k] - before[k] for k in COUNTS}
    served_rate = w["served"] / dur
    on_time_served = p["served"].get("on_time", 0.0)
    return {
        "label": label, "connections": connections, "delay_ms": delay_ms, "offered_target_rps": offered,
        "sent_rps": round(w["requests"] / dur, 1), "served_rps": round(served_rate, 1),
        "served_on_time_rps": round(served_rate * on_time_served, 1),
        "shed_share": round(w["shed"] / w["requests"], 4) if w["requests"] else None,
        "deadline_share": round(w["deadline"] / w["requests"], 4) if w["requests"] else None,
        "answered_on_time": round(w["on_time_pct"] / 100.0, 4),
        "errors": w["other"] + w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"],
        "client_p50_ms": w["p50_us"] / 1000, "client_p99_ms": w["p99_us"] / 1000, "client_max_ms": w["max_us"] / 1000,
        "probe": p, "server": srv,
        "server_late_share": round(srv["late_suppressed"] / srv["requests"], 4) if srv["requests"] else None,
        "shed_by_haproxy": w["shed"] + p["shed"]["n"] - srv["shed"],
        # cores each role used over the step (the whole box: the load generator and others too)
        "cpu_cores": {r: round(us / 1e6 / dur, 3) for r, us in cpu.per_request(cpu0, cpu1, 1, min_us=dur * 1e4).items()},
    }


def describe(s: dict) -> str:
    p = s["probe"]
    return (f"  {s['label']:<22} sent {s['sent_rps']:7.0f}/s served {s['served_rps']:6.0f}/s "
            f"(on time {s['served_on_time_rps']:6.0f}/s) shed {s['shed_share'] or 0:6.1%} "
            f"deadline {s['deadline_share'] or 0:5.2%} "
            f"answered in tmax {s['answered_on_time']:7.2%} p99 {s['client_p99_ms']:6.1f} ms | "
            f"probe served p99 {p['served'].get('p99_ms', '-')} ms, shed p50/p99/max "
            f"{p['shed'].get('p50_ms', '-')}/{p['shed'].get('p99_ms', '-')}/{p['shed'].get('max_ms', '-')} ms | "
            f"server late {s['server_late_share']}, replica shed {s['server']['shed']}, errors {s['errors']}\n"
            f"    cores: " + ", ".join(f"{r} {c:.2f}" for r, c in list(s["cpu_cores"].items())[:7]))


def run_overload(base: str, prefix: str, region: str, seconds: float, tmax_ms: int, capacity_conns: int,
                 multiples=(1, 2, 5), log=print, quick: bool = False) -> dict:
    wrk = ensure_wrk()
    bodies = bodies_with_tmax(region, tmax_ms)
    try:
        warm = step(wrk, base, prefix, bodies, "warm-up", capacity_conns, 0, 4, tmax_ms)
        log(describe(warm))
        cap = step(wrk, base, prefix, bodies, f"capacity (closed, c={capacity_conns})", capacity_conns, 0, seconds,
                   tmax_ms)
        log(describe(cap))
        capacity = cap["served_on_time_rps"]
        steps = [cap, step(wrk, base, prefix, bodies, "closed loop c=128", 128, 0, seconds, tmax_ms)]
        log(describe(steps[-1]))
        for m in (() if quick else multiples):
            rate = m * capacity
            conns = int(min(512, max(32, rate * 0.05)))  # ~50 ms per connection between requests
            steps.append(step(wrk, base, prefix, bodies, f"open {m:g}x ({rate:.0f}/s)", conns,
                              conns * 1000.0 / rate, seconds, tmax_ms, offered=round(rate, 1)))
            log(describe(steps[-1]))
        return {"region": region, "tmax_ms": tmax_ms, "capacity_on_time_rps": capacity, "steps": steps}
    finally:
        bodies.unlink(missing_ok=True)


def _pin_process(cores: set[int]) -> None:
    """Every thread of this process onto ``cores`` (a new thread or child inherits its creator's)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", default="us-east")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--tmax-ms", type=int, default=100)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--model", default="ctr/v1")
    ap.add_argument("--niceness", type=int, default=None, help="RAY_worker_niceness for this run (the fleet's: 0; Ray's own: 15)")
    ap.add_argument("--quick", action="store_true", help="capacity and the closed loop only")
    ap.add_argument("--multiples", default="1,2,5", help="open-loop steps, as multiples of capacity")
    ap.add_argument("--capacity-connections", type=int, default=CAPACITY_CONNS,
                    help="the closed loop whose served-on-time rate is 1x (fixed: not the limits under test)")
    ap.add_argument("--split-cores", action="store_true",
                    help="the load generator on core 0, the fleet (Redis, Ray and all it starts) on the others")
    ap.add_argument("--probe-niceness", type=int, default=None,
                    help="the probe's thread at this nice value (e.g. -10): an exchange's own clock does not "
                         "wait behind the fleet's CPU; wrk keeps its own")
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if a.split_cores and len(cores) < 2:
        raise SystemExit("--split-cores needs at least two cores")
    if a.split_cores:  # Redis and Ray, started from here, inherit this (and every process Ray starts)
        _pin_process(set(cores[1:]))

    from fleet.runtime import local
    from fleet.runtime.ingress import limits_from_env

    os.environ.update(local.ray_env())
    if a.niceness is not None:
        os.environ["RAY_worker_niceness"] = str(a.niceness)
    import ray
    from ray import serve

    from fleet.cli.common import wait_ready
    from fleet.config import RegionAppArgs, load_regions
    from fleet.serve import region_app

    spec = load_regions().regions[a.region]
    redis_url, _, redis_proc = local.start_redis(Path(tempfile.mkdtemp(prefix="overload-redis-")))
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"REDIS_URL": redis_url}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        serve.run(region_app.build_app(RegionAppArgs(region=a.region, model=a.model)), name=f"bench-{a.region}",
                  route_prefix=spec.route_prefix, blocking=False)
        base = f"http://127.0.0.1:{a.port}"
        if not wait_ready(base, [spec.route_prefix], 180):
            raise SystemExit("region did not become ready")
        if a.split_cores:  # the exchange's side: the probe here and wrk (inherits it)
            _pin_process({cores[0]})
        if a.probe_niceness is not None:  # this thread only: wrk is started from another one
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), a.probe_niceness)
        doc = run_overload(base, spec.route_prefix, a.region, a.seconds, a.tmax_ms, a.capacity_connections,
                           multiples=tuple(float(m) for m in a.multiples.split(",")), quick=a.quick)
        doc.update({"split_cores": a.split_cores, "probe_niceness": a.probe_niceness, "limits": limits_from_env().__dict__, "niceness": int(os.environ.get("RAY_worker_niceness", 15)),
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": a.model})
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"overload-{a.region}{'-' + a.label if a.label else ''}.json"
        out.write_text(json.dumps(doc, indent=2, default=list))
        print(f"wrote {out.relative_to(REPO_ROOT)}")
    finally:
        serve.shutdown()
        ray.shutdown()
        local.stop_haproxy()
        redis_proc.terminate()


if __name__ == "__main__":
    main()
