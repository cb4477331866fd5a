"""Where an ingress replica's CPU goes under load: per thread, and per function (py-spy).

``python -m fleet.bench.cost_profile [--seconds S] [--out DIR]`` (under the Ray lock) starts one
region and the no-op app as ``fleet bench cost --scope region`` does, drives each at saturation
with the same wrk, and meanwhile reads every thread's CPU time of the target's replica
(``/proc/<pid>/task/*``: which of Ray's threads cost what, beside the event loop's) and, when
``py-spy`` is installed beside the interpreter, records the replica's stacks (raw, collapsed,
``--threads``) for ``fleet.bench.cost_profile_read`` to fold. Threads' CPU is divided by the
step's requests, as ``fleet bench cost`` divides processes'.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from fleet.bench import capacity
from fleet.bench.cost import NOOP_APP, NOOP_PREFIX, region_scope


def replica_pid(app: str) -> int:
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if cmd and cmd[0].startswith(f"ray::ServeReplica:{app}:"):
            return p.info["pid"]
    raise RuntimeError(f"no replica of {app}")


def serve_log_bytes(app: str) -> int:
    """The size of the replica's Serve log now (its access log lines, unless they are off)."""
    from glob import glob

    return sum(os.path.getsize(f) for f in glob(f"/tmp/ray/session_latest/logs/serve/replica_{app}_*.log"))


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def per_thread_us(before, after, requests: int) -> dict[str, float]:
    used: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        d = cpu - before.get(tid, (name, 0.0))[1]
        if d > 0:
            used[name] = used.get(name, 0.0) + d
    return dict(sorted(((k, round(v * 1e6 / max(1, requests), 1)) for k, v in used.items()), key=lambda kv: -kv[1]))


def profile(label: str, app: str, url: str, bodies: Path, wrk: str, base: str, seconds: float, out: Path,
            spy: str | None, rate: int) -> dict:
    pid = replica_pid(app)
    res: dict = {}

    def drive():
        res["step"] = capacity.wrk_step(wrk, url, bodies, float("inf"), seconds, 8, base, None, 1e9)

    t0 = thread_cpu(pid)
    p0 = psutil.Process(pid).cpu_times()
    th = threading.Thread(target=drive)
    th.start()
    proc = None
    if spy:
        time.sleep(1.0)
        proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
                                 str(int(seconds - 2)), "--format", "raw", "--threads", "--idle", "--nonblocking",
                                 "-o", str(out / f"spy-{label}.txt")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    th.join()
    t1 = thread_cpu(pid)
    p1 = psutil.Process(pid).cpu_times()
    if proc is not None:
        proc.wait(timeout=30)
    s = res["step"]
    return {"label": label, "pid": pid, "rps": round(s.achieved), "requests": s.requests,
            "process_us": round(((p1.user + p1.system) - (p0.user + p0.system)) * 1e6 / max(1, s.requests), 1),
            "threads_us": per_thread_us(t0, t1, s.requests)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", default="us-east")
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--no-spy", action="store_true")
    ap.add_argument("--out", default="bench/results/profile")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--targets", default="region,noop", help="Any of region, noop, canned (fleet.bench.canned_app).")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    spy = None if a.no_spy else (shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy"))
    from fleet.config import load_regions

    prefix = load_regions().regions[a.region].route_prefix
    wrk = capacity.ensure_wrk()
    bodies = capacity.write_bodies(a.region, capacity.BODIES)
    rows = []
    try:
        with region_scope(a.region, a.port) as (base, _redis):
            want = a.targets.split(",")
            targets = [(a.region, a.region, prefix, "region"), ("noop", NOOP_APP, NOOP_PREFIX, "noop")]
            if "canned" in want:
                from ray import serve

                from fleet.bench import canned_app

                serve.run(canned_app.build_app(), name="bench-canned", route_prefix="/bench-canned")
                targets.append(("canned", "bench-canned", "/bench-canned", "canned"))
            for label, app, pre, kind in targets:
                if kind not in want:
                    continue
                url = f"{base}{pre}/openrtb2/bid"
                for _ in range(2 if kind == "region" else 1):  # warm-up as fleet bench cost does
                    capacity.wrk_step(wrk, url, bodies, float("inf"), 6, 8, base, None, 1e9)
                rows.append(profile(label, app, url, bodies, wrk, base, a.seconds, out, spy, a.rate))
                rows[-1]["serve_log_bytes"] = serve_log_bytes(app)
                print(json.dumps(rows[-1]), flush=True)
    finally:
        bodies.unlink(missing_ok=True)
    (out / "threads.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
