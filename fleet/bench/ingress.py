"""Ingress choice, measured: Serve's default Python proxy against HAProxy direct ingress.

Each mode runs in its own process with its own Ray instance (Serve reads these settings when it
starts), one after the other in one command: the noop app, the same wrk (closed loop, fixed
connections) and the same bodies. Only the ratio between the modes is quoted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fleet.runtime.local import ray_env

MODES = {
    "python-proxy": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "haproxy+throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def _measure(mode: str, port: int, seconds: float, connections: int) -> dict:
    """Runs inside the per-mode subprocess."""
    import ray
    from ray import serve

    from fleet.bench.capacity import LUA, ensure_wrk, write_bodies
    from fleet.serve import noop_app

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    bodies = write_bodies("us-east", 2000)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(noop_app.build_app(), name="noop", route_prefix="/noop", blocking=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                                f"http://127.0.0.1:{port}/noop/openrtb2/bid", "-d", "{}"],
                               capture_output=True, text=True)
            if r.stdout == "204":
                break
            time.sleep(0.5)
        wrk = ensure_wrk()
        url = f"http://127.0.0.1:{port}/noop/openrtb2/bid"
        args = [wrk, "-t1", f"-c{connections}", "-s", str(LUA), url, "--", str(bodies), "0"]
        subprocess.run(args[:3] + ["-d2s"] + args[3:] + [uuid.uuid4().hex[:6]], check=True,
                       capture_output=True)  # warm-up
        out = subprocess.run(args[:3] + [f"-d{int(seconds)}s"] + args[3:] + [uuid.uuid4().hex[:6]],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        return {"mode": mode, "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
                "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                "errors": r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["status_errors"] + r["timeouts"]}
    finally:
        bodies.unlink(missing_ok=True)
        serve.shutdown()
        ray.shutdown()
        from fleet.runtime.local import stop_haproxy

        stop_haproxy()  # one mode's lingering HAProxy would hold its ports against the next


def run_ingress(out: Path, seconds: float = 8.0, connections: int = 8, port: int = 8124, log=print) -> dict:
    rows = []
    for mode, env in MODES.items():
        clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
        clean.update({k: v for k, v in ray_env().items() if k.startswith("RAY_AUTH")})
        proc = subprocess.run(
            [sys.executable, "-m", "fleet.bench.ingress", mode, str(port), str(seconds), str(connections)],
            env={**clean, **env}, capture_output=True, text=True, check=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {mode:<20} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  errors {row['errors']}")
        rows.append(row)
    ref = rows[0]["rps"]
    for row in rows:
        row["ratio_to_python_proxy"] = round(row["rps"] / ref, 2) if ref else None
    doc = {"benchmark": "ingress", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()},
           "method": {"app": "noop", "generator": f"wrk -t1 -c{connections} closed loop", "seconds": seconds},
           "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    mode, port, seconds, conns = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(_measure(mode, port, seconds, conns)))
