"""What one idle Ray worker process costs, thread by thread, with nothing of the fleet in it.

``python -m fleet.bench.idle_worker [--seconds 30] [--sync 6] [--async-actors 2] [--label L]``
(under the Ray lock) starts a bare local Ray, creates plain idle actors (``@ray.remote class``
with one method, and async ones), lets them settle, and reads each actor's CPU time per thread
from ``/proc`` over one window. Ray settings to compare go in the environment (``RAY_event_stats=0
python -m fleet.bench.idle_worker``); they are recorded beside the figures. Writes
``bench/results/idle-worker[-label].json``.

Why: the fleet runs ~17 actor and replica processes; ``fleet.bench.idle`` showed each one's main
thread taking ~0.003-0.005 of a core with no traffic. This tells Ray's own floor (the thread named
``main``: Ray's task execution loop) from the fleet's loops (the asyncio thread) and Ray's gRPC
and reporting threads (``worker.io``, ``client.poll0``, ...). docs/benchmarks.md, "Idle background".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

from fleet.bench.idle import recorded_env

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
_TICK = os.sysconf("SC_CLK_TCK")

Threads = dict[str, tuple[str, float]]  # tid -> (thread name, CPU seconds user + system)


def read_threads(pid: int) -> Threads:
    """Each thread of ``pid`` with its CPU seconds; the process's own thread is named ``main``
    (its kernel name is the process title, which Ray changes as tasks run)."""
    out: Threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = ("main" if tid == str(pid) else name, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def by_thread(before: dict[int, Threads], after: dict[int, Threads], seconds: float) -> dict:
    """Cores per process and, averaged over the processes, per thread name. A thread that
    appeared or ended inside the window is left out (its CPU before or after is unknown)."""
    if seconds <= 0 or not before:
        return {"per_process": {}, "mean": 0.0, "threads": {}}
    per_process: dict[int, float] = {}
    names: Counter = Counter()
    for pid, threads in before.items():
        total = 0.0
        for tid, (name, cpu) in threads.items():
            if tid not in after.get(pid, {}):
                continue
            d = max(0.0, after[pid][tid][1] - cpu) / seconds
            total += d
            names[name] += d / len(before)
        per_process[pid] = round(total, 5)
    return {"per_process": per_process,
            "mean": round(sum(per_process.values()) / len(per_process), 5),
            "threads": {n: round(c, 5) for n, c in names.most_common() if c > 0}}


def measure(n_sync: int, n_async: int, settle: float, seconds: float) -> dict:
    import ray

    @ray.remote
    class Plain:
        def pid(self) -> int:
            return os.getpid()

    @ray.remote
    class Async:
        async def pid(self) -> int:
            return os.getpid()

    ray.init(num_cpus=max(1, n_sync + n_async), include_dashboard=False)
    try:
        actors = [Plain.remote() for _ in range(n_sync)] + [Async.remote() for _ in range(n_async)]
        pids = ray.get([a.pid.remote() for a in actors])
        time.sleep(settle)
        before, t0 = {p: read_threads(p) for p in pids}, time.monotonic()
        time.sleep(seconds)
        after, t1 = {p: read_threads(p) for p in pids}, time.monotonic()
        return {"sync": pids[:n_sync], "async": pids[n_sync:], **by_thread(before, after, t1 - t0)}
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--sync", type=int, default=6)
    ap.add_argument("--async-actors", type=int, default=2)
    ap.add_argument("--label", default="")
    a = ap.parse_args(argv)
    res = measure(a.sync, a.async_actors, a.settle, a.seconds)
    doc = {"benchmark": "idle-worker", "label": a.label, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "method": {"seconds": a.seconds, "settle_s": a.settle, "cpu": "user+system per thread / window (cores)"},
           "env": recorded_env(os.environ), **res}
    out = RESULTS / f"idle-worker{'-' + a.label if a.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    per = list(res["per_process"].values())
    print(f"idle worker [{a.label}]: {res['mean']:.4f} cores a process (range {min(per):.4f}-{max(per):.4f}); "
          + ", ".join(f"{n} {c:.4f}" for n, c in res["threads"].items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
