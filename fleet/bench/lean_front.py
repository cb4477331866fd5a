"""What a lean HTTP front would cost per request, beside uvicorn's and Serve's (issue 24).

A region's ingress spends ~260 us of CPU a request in Serve's, uvicorn's, asyncio's and
Starlette's per-request Python (docs/benchmarks.md, "The arithmetic of the targets"); this
measures the alternative before anyone builds it. Without Ray, one at a time, each in a process
of its own on 127.0.0.1, driven at saturation by the capacity bench's wrk (8 closed-loop
connections, the same OpenRTB bodies): the server process's CPU (user + system) per request.

- ``uvicorn-204`` / ``uvicorn-canned``: uvicorn (httptools, uvloop, as a Serve replica runs it)
  with a bare ASGI app answering 204, or the canned 2,163 B answer with the bidder's headers
  (``fleet.bench.canned_app``): the HTTP server's floor without Serve.
- ``lean-204`` / ``lean-canned``: ``fleet.bench.lean_http.LeanFront``, httptools' parser under
  an ``asyncio.Protocol`` (keep-alive, headers read, one handler call a request), the same answers.
- ``lean-bid``: ``LeanFront`` answering with the in-process bid path (``RegionBidder`` built as
  ``fleet.bench.cost_inproc`` builds it): no cache lookup, ledger emit or traces;
  ``lean-bid-await``: the same in a task per request that awaits once first (a lookup's reply).
- with ``--serve`` (under the Ray lock): the no-op and canned Serve apps behind Serve's HAProxy
  in the same run, the replica's CPU per request (HAProxy's apart).

    flock /tmp/ray.lock .venv/bin/python -m fleet.bench.lean_front [--serve] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

from fleet.bench.lean_http import LeanFront, awaiting_bid_handler, bid_handler, canned_handler, no_content

LEAN = ("lean-204", "lean-canned", "lean-bid", "lean-bid-await")
UVICORN = ("uvicorn-204", "uvicorn-canned")
SERVE = {"serve-noop": ("bench-noop", "/bench-noop"), "serve-canned": ("bench-canned", "/bench-canned")}


async def _asgi_drain(receive) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)


async def asgi_204(scope, receive, send) -> None:
    await _asgi_drain(receive)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def asgi_canned():
    """A bare ASGI app with ``fleet.bench.canned_app``'s answer (imported late, as ``canned_handler``)."""
    from fleet.bench.canned_app import BODY, HEADERS

    start = {"type": "http.response.start", "status": 200,
             "headers": [(k.encode(), v.encode()) for k, v in HEADERS.items()]
             + [(b"content-length", str(len(BODY)).encode())]}

    async def app(scope, receive, send) -> None:
        await _asgi_drain(receive)
        await send(start)
        await send({"type": "http.response.body", "body": BODY})

    return app


def serve_one(variant: str, port: int) -> None:
    """The server process: run ``variant`` on 127.0.0.1:``port`` until SIGTERM; a lean server
    then prints its counts (and the bid path's statuses) as one JSON line."""
    import uvloop  # as a Serve replica's loop (Ray installs uvloop in its workers)

    if variant in UVICORN:
        import uvicorn

        app = asgi_204 if variant == "uvicorn-204" else asgi_canned()
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop",
                                      lifespan="off", access_log=False, log_level="warning")).run()
        return
    statuses: Counter = Counter()
    if variant == "lean-bid":
        handler, statuses = bid_handler()
    elif variant == "lean-bid-await":
        handler, statuses = awaiting_bid_handler()
    else:
        handler = no_content if variant == "lean-204" else canned_handler()
    front = LeanFront(handler)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = await front.start("127.0.0.1", port)
        await stop.wait()
        server.close()

    uvloop.run(main())
    print(json.dumps({**front.counts, "statuses": {str(k): v for k, v in statuses.items()}}), flush=True)


def _cpu(pids: list[int]) -> float:
    import psutil

    return sum(t.user + t.system for t in (psutil.Process(p).cpu_times() for p in pids))


def step(wrk: str, bodies: Path, url: str, rate: float, seconds: float, server: list[int], side: list[int]) -> dict:
    """One wrk step (closed loop when ``rate`` is inf): the server's CPU per request, HAProxy's
    (``side``) apart, and wrk's (this process's reaped children)."""
    from fleet.bench import capacity

    c0, s0, k0 = _cpu(server), _cpu(side), resource.getrusage(resource.RUSAGE_CHILDREN)
    s = capacity.wrk_step(wrk, url, bodies, rate, seconds, capacity.SATURATION_CONNS, "", None, 1e9)
    c1, s1, k1 = _cpu(server), _cpu(side), resource.getrusage(resource.RUSAGE_CHILDREN)
    n = max(1, s.requests)
    return {"rps": round(s.achieved), "requests": s.requests, "errors": s.errors, "p99_ms": round(s.p99_ms, 2),
            "server_us": round((c1 - c0) * 1e6 / n, 1), "haproxy_us": round((s1 - s0) * 1e6 / n, 1) if side else None,
            "wrk_us": round(((k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime)) * 1e6 / n, 1)}


def drive(wrk: str, bodies: Path, url: str, server: list[int], side: list[int], seconds: float, warm_s: float,
          paced: float) -> dict:
    """Warm up, then saturation (closed loop) and a step paced at ``paced`` requests/s: at a
    common rate, so no server is flattered by the batching a higher rate gives its loop."""
    step(wrk, bodies, url, float("inf"), warm_s, [], [])
    return {"saturation": step(wrk, bodies, url, float("inf"), seconds, server, side),
            **({"paced": step(wrk, bodies, url, paced, seconds, server, side)} if paced else {})}


def run_local(variant: str, wrk: str, bodies: Path, seconds: float, warm_s: float, paced: float) -> dict:
    """One variant in a fresh process of its own: start, warm up, measure, stop."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fleet.bench.lean_front", "--serve-one", variant,
                             "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{variant} did not start (exit {proc.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        row = drive(wrk, bodies, f"http://127.0.0.1:{port}/openrtb2/bid", [proc.pid], [], seconds, warm_s, paced)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    if variant in LEAN and out.strip():
        row["server_counts"] = json.loads(out.strip().splitlines()[-1])
    return row


@contextmanager
def serve_apps(region: str = "us-east", port: int = 8123):
    """The no-op and canned Serve apps behind Serve's HAProxy, as ``fleet bench cost --scope
    region`` deploys the no-op (the fleet's Ray environment); yields the base URL."""
    from fleet.runtime import local

    os.environ.update(local.ray_env())
    import ray
    from ray import serve

    from fleet.bench import canned_app
    from fleet.bench.cost import wait_noop
    from fleet.config import load_regions
    from fleet.serve import noop_app

    ongoing = load_regions().regions[region].max_ongoing_requests
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, (app, prefix) in SERVE.items():
            mod = noop_app if name == "serve-noop" else canned_app
            serve.run(mod.build_app({"max_ongoing_requests": ongoing}), name=app, route_prefix=prefix, blocking=False)
        base = f"http://127.0.0.1:{port}"
        wait_noop(base)
        time.sleep(2)
        yield base
    finally:
        try:
            serve.shutdown()
            ray.shutdown()
        finally:
            local.stop_haproxy()  # ours: started under the Ray lock this run holds


def _pids(match: Callable[[str, list[str]], bool]) -> list[int]:
    import psutil

    return [p.info["pid"] for p in psutil.process_iter(["pid", "name", "cmdline"])
            if match(p.info.get("name") or "", p.info.get("cmdline") or [""])]


def _summary(rows: list[dict]) -> dict:
    us = [x["server_us"] for x in rows]
    side = [x["haproxy_us"] for x in rows if x["haproxy_us"] is not None]
    return {"server_us": statistics.median(us), "server_us_range": [min(us), max(us)],
            "rps": statistics.median(x["rps"] for x in rows), "wrk_us": statistics.median(x["wrk_us"] for x in rows),
            **({"haproxy_us": statistics.median(side)} if side else {})}


def run(variants: list[str], rounds: int, seconds: float, warm_s: float, paced: float, serve: bool,
        log=print) -> dict:
    from fleet.bench import capacity

    wrk = capacity.ensure_wrk()
    bodies = capacity.write_bodies("us-east", capacity.BODIES)
    names = variants + (list(SERVE) if serve else [])
    per: dict[str, list[dict]] = {v: [] for v in names}
    try:
        with (serve_apps() if serve else nullcontext("")) as base:
            for r in range(rounds):
                for v in (names if r % 2 == 0 else names[::-1]):  # the order alternates by round
                    if v in SERVE:
                        app, prefix = SERVE[v]
                        replica = _pids(lambda n, cmd: cmd[0].startswith(f"ray::ServeReplica:{app}:"))
                        row = drive(wrk, bodies, f"{base}{prefix}/openrtb2/bid", replica,
                                    _pids(lambda n, cmd: n == "haproxy"), seconds, warm_s, paced)
                    else:
                        row = run_local(v, wrk, bodies, seconds, warm_s, paced)
                    per[v].append(row)
                    for phase in ("saturation", "paced"):
                        if phase in row:
                            x = row[phase]
                            log(f"round {r + 1} {v:<15} {phase:<10} {x['rps']:6d}/s  server {x['server_us']:6.1f} "
                                f"us/req  wrk {x['wrk_us']:5.1f}  errors {x['errors']}"
                                + (f"  haproxy {x['haproxy_us']}" if x["haproxy_us"] is not None else ""))
    finally:
        bodies.unlink(missing_ok=True)
    inproc = None
    if any(v.startswith("lean-bid") for v in variants):  # the same bid path called in a loop: what the front adds to it
        from fleet.bench import cost_inproc

        inproc = cost_inproc.run(3000, 3, parts=False)["bid_path_us"]
        log(f"in process: bid path {inproc} us/req (CPU, best of 3 rounds of 3,000)")
    summary = {v: {ph: _summary([x[ph] for x in rows]) for ph in ("saturation", "paced") if ph in rows[0]}
               for v, rows in per.items()}
    return {"benchmark": "lean-front", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "method": {"generator": "wrk -t1 -c8, the capacity bench's bodies", "step_s": seconds, "warm_s": warm_s,
                       "paced_rps": paced, "rounds": rounds,
                       "cpu": "server process user+system over the step / requests (us)"},
            "summary": summary, "inproc_bid_path_us": inproc, "rounds": per}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(UVICORN + LEAN))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--warm", type=float, default=3)
    ap.add_argument("--paced", type=float, default=1600, help="The paced step's rate (0: none): a region's rate.")
    ap.add_argument("--serve", action="store_true", help="Also the Serve no-op and canned apps (starts Ray).")
    ap.add_argument("--out", default="bench/results/lean-front.json")
    ap.add_argument("--serve-one", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve_one:
        serve_one(a.serve_one, a.port)
        return
    doc = run(a.variants.split(","), a.rounds, a.seconds, a.warm, a.paced, a.serve)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    for v, phases in doc["summary"].items():
        for ph, x in phases.items():
            print(f"{v:<15} {ph:<10} {x['server_us']:7.1f} us/req ({x['server_us_range'][0]}-"
                  f"{x['server_us_range'][1]})  {x['rps']:7.0f}/s")


if __name__ == "__main__":
    main()
