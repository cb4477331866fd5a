"""CPU time by process role over a benchmark step: where each request's CPU goes.

On two shared cores a capacity ratio mixes two things: what a part costs the ingress per
request, and what its own processes (cache shards, Redis) take from the same cores. CPU time per
request, by role, separates them. On a machine where the shards have cores of their own, the
ingress's CPU per request is what bounds one replica's capacity. (On the 2-core VM it moved with
the VM's speed as much as throughput did: docs/benchmarks.md.)

A role is a process's name as Ray titles its workers (``ray::CacheShard.lookup`` is
``CacheShard``; a Serve replica keeps its app and deployment, ``ServeReplica:bench-us-east:Region``),
or the executable's name for everything else (``redis-server``, ``haproxy``, ``raylet``);
kernel threads are one role, ``kernel``.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

Snapshot = dict[int, tuple[str, float]]  # pid -> (role, CPU seconds, user + system)

_SKIP = frozenset({"bash", "sh", "sleep", "ps"})


def role_of(cmdline: list[str], name: str) -> str:
    """The role of a process from its command line (Ray workers carry their title there)."""
    if not cmdline:
        return "kernel"  # kernel threads (kworker/..., ksoftirqd/...): no command line
    first = cmdline[0]
    if first.startswith("ray::"):
        title = first[5:].split(" ", 1)[0]
        if title.startswith("ServeReplica:"):
            return title
        return title.split(".", 1)[0]
    base = Path(first.split(" ", 1)[0]).name or name  # redis-server titles itself "redis-server host:port"
    if base.startswith("python") and len(cmdline) > 1:
        # plain Python processes (Ray's own helpers): name them by their script or module
        arg = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return f"python:{Path(arg).name}" if arg else base
    return base


def snapshot() -> Snapshot:
    """Every process's role and CPU seconds now (this process left out)."""
    out: Snapshot = {}
    me = os.getpid()
    for p in psutil.process_iter(["pid", "name", "cmdline", "cpu_times"]):
        info = p.info
        pid = info["pid"]
        if pid == me or info.get("cpu_times") is None:
            continue
        role = role_of(info.get("cmdline") or [], info.get("name") or "")
        if role in _SKIP:
            continue
        t = info["cpu_times"]
        out[pid] = (role, t.user + t.system)
    return out


def cpu_seconds(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """role (or label) -> CPU seconds used between two snapshots. A process born in between
    counts from zero; one whose role changed (a Ray worker that took a new title) counts as
    new; one gone in between is not counted."""
    used: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        prev = before.get(pid)
        d = cpu - (prev[1] if prev is not None and prev[0] == role else 0.0)
        if d > 0:
            used[role] = used.get(role, 0.0) + d
    return used


def per_request(before: Snapshot, after: Snapshot, requests: int, min_us: float = 1.0) -> dict[str, float]:
    """CPU microseconds per request by role between two snapshots (``cpu_seconds``), largest
    first. Roles under ``min_us`` are left out."""
    if requests <= 0:
        return {}
    by_role = cpu_seconds(before, after)
    return ranked({r: round(s * 1e6 / requests, 1) for r, s in by_role.items() if s * 1e6 / requests >= min_us})


def ranked(by_role: dict[str, float]) -> dict[str, float]:
    return dict(sorted(by_role.items(), key=lambda kv: -kv[1]))


def total(by_role: dict[str, float], leave_out: tuple[str, ...] = ("wrk", "kernel")) -> float:
    """All roles' CPU per request but the load generator's and the kernel threads' (on a VM
    those are mostly the hypervisor's devices and memory housekeeping, kept apart as ``kernel``;
    most of the network stack's work is charged to the processes whose system calls do it)."""
    return round(sum(v for r, v in by_role.items() if r not in leave_out), 1)


def app_share(by_role: dict[str, float], app: str) -> float:
    """The CPU per request of one Serve app's replicas (the ingress, for a region app)."""
    return round(sum(v for r, v in by_role.items() if r.startswith(f"ServeReplica:{app}:")), 1)
