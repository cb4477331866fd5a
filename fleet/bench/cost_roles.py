"""Every process on the box named by what it is for the fleet, for ``fleet bench cost``.

``fleet.bench.cpu`` names a process by its title (``ray::CacheShard``), which cannot tell one
region's shard from another's; here the fleet's named actors are asked for their pids, so each
shard and ledger consumer is its own line, and the one Redis the run started is told from any
other ``redis-server`` on a shared box. Processes that are not the fleet's (another session's
tests) are labelled ``outside`` and left out of every total.
"""

from __future__ import annotations

import os

import psutil

from fleet.bench.cpu import Snapshot, cpu_seconds, role_of


# What a stacked bar shows, bottom up; labels map to these.
GROUPS = ("ingress", "cache shards", "ledger consumer", "redis", "control", "idle apps (other regions, no-op)", "haproxy",
          "ray (raylet, GCS, dashboard, Serve controller)", "load generator")
LEFT_OUT = ("load generator", "kernel", "outside")  # not the fleet's CPU


def _is_ray(cmdline: list[str]) -> bool:
    return bool(cmdline) and (cmdline[0].startswith("ray::") or any("/site-packages/ray/" in a for a in cmdline))


class Labeller:
    """Labels for one target: ``app`` is the Serve app under test (a region's, or the no-op's),
    ``region`` the region it is (None for the no-op app: every region is then background)."""

    def __init__(self, app: str, region: str | None, pids: dict[int, tuple[str, str]], redis_pid: int):
        self.app = app
        self.region = region
        self.pids = pids  # actor pid -> (label, its region)
        self.redis_pid = redis_pid

    @classmethod
    def connect(cls, region: str, regions: list[str], shard_counts: dict[str, int], redis_pid: int,
                app: str) -> "Labeller":
        """Ask Ray (connected already) for each region's shard and ledger actor pids."""
        import ray

        from fleet.serve.cache_actor import NAMESPACE, shard_names

        pids: dict[int, tuple[str, str]] = {}
        for r in regions:
            for name in shard_names(r, shard_counts.get(r) or 0):
                try:
                    h = ray.get_actor(name, namespace=NAMESPACE)
                    pids[int(ray.get(h.pid.remote(), timeout=10))] = (f"shard {name}", r)
                except Exception:
                    pass
            try:
                h = ray.get_actor(f"ledger-{r}", namespace=NAMESPACE)
                pids[int(ray.get(h.stats.remote(), timeout=10)["pid"])] = (f"ledger {r}", r)
            except Exception:
                pass
        return cls(app, region if app != "bench-noop" else None, pids, redis_pid)

    def describe(self) -> str:
        return ", ".join(f"{label} pid {pid}" for pid, (label, _) in sorted(self.pids.items()))

    def label(self, pid: int, cmdline: list[str], name: str) -> str:
        if pid in self.pids:
            return self.pids[pid][0]
        if pid == self.redis_pid:
            return "redis"
        role = role_of(cmdline, name)
        if role == "kernel":
            return "kernel"
        if role == "wrk":
            return "wrk"
        if role == "haproxy":
            return "haproxy"
        if role.startswith("ServeReplica:"):
            return f"replica {role.split(':')[1]}"
        if role == "ControlActor":
            return "control actor"
        if _is_ray(cmdline):
            return f"ray {role}"
        return "outside"

    def group(self, label: str) -> str:
        if label == "wrk":
            return "load generator"
        if label in ("kernel", "outside", "redis", "haproxy"):
            return label
        if label == "control actor" or label == "replica control":
            return "control"
        if label.startswith("replica "):
            app = label[8:]
            return "ingress" if app == self.app else "idle apps (other regions, no-op)"
        if label.startswith(("shard ", "ledger ")):
            region = next((r for _, (lab, r) in self.pids.items() if lab == label), None)
            if self.region is None or region != self.region:
                return "idle apps (other regions, no-op)"
            return "cache shards" if label.startswith("shard ") else "ledger consumer"
        if label.startswith("ray "):
            return "ray (raylet, GCS, dashboard, Serve controller)"
        return "outside"

    def snapshot(self) -> Snapshot:
        out: Snapshot = {}
        me = os.getpid()
        for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
            info = p.info
            if info["pid"] == me or info.get("cpu_times") is None:
                continue
            t = info["cpu_times"]
            out[info["pid"]] = (self.label(info["pid"], info.get("cmdline") or [], info.get("name") or ""),
                                t.user + t.system)
        return out

    def per_request(self, before: Snapshot, after: Snapshot, requests: int) -> dict[str, dict]:
        """label -> {"us": CPU us per request, "group": its group}, largest first; labels under
        0.5 us left out. A process born during the step counts from zero."""
        if requests <= 0:
            return {}
        used = cpu_seconds(before, after)
        rows = {lab: {"us": round(s * 1e6 / requests, 1), "group": self.group(lab)} for lab, s in used.items()
                if s * 1e6 / requests >= 0.5}
        return dict(sorted(rows.items(), key=lambda kv: -kv[1]["us"]))


def by_group(per_proc: dict[str, dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in per_proc.values():
        out[row["group"]] = round(out.get(row["group"], 0.0) + row["us"], 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def fleet_total(per_proc: dict[str, dict]) -> float:
    """Every fleet process's CPU per request, the load generator's and other work's left out."""
    return round(sum(r["us"] for r in per_proc.values() if r["group"] not in LEFT_OUT), 1)
