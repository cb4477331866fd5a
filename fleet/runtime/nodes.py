"""A local Ray cluster of several nodes on one machine (``fleet up --nodes N``).

The head and each worker are separate raylets joined to one GCS, each advertising the
resources of the regions planned onto it (``fleet.runtime.placement``), so every region's
processes run on its own node as they would on a region's own machines. ``kill`` takes a worker
down the way a machine is lost (its raylet and every process under it, SIGKILL, no drain);
``start`` brings it back under the same name and regions, and Serve and the detached actors
reschedule there by themselves. Ports are chosen free per start: several raylets share one host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import asdict, dataclass, field

import psutil

from fleet.runtime.placement import node_capacity

WORKER_OBJECT_STORE = 256 * 1024 * 1024  # the region's processes pass rows, not tensors


@dataclass
class NodeRecord:
    name: str  # "head", "worker-1", ...
    regions: list[str] = field(default_factory=list)
    node_manager_port: int = 0
    pids: list[int] = field(default_factory=list)  # this worker's raylet and log monitor

    @property
    def head(self) -> bool:
        return self.name == "head"


def plan(regions: list[str], n: int) -> list[NodeRecord]:
    """Regions dealt round-robin over ``n`` nodes, the head first: with 2 nodes and 3 regions the
    head carries the 1st and 3rd, the worker the 2nd."""
    if n < 1:
        raise ValueError("a cluster needs at least one node")
    nodes = [NodeRecord("head" if i == 0 else f"worker-{i}") for i in range(n)]
    for i, region in enumerate(regions):
        nodes[i % n].regions.append(region)
    return nodes


def to_state(nodes: list[NodeRecord]) -> list[dict]:
    return [asdict(n) for n in nodes]


def from_state(items: list[dict]) -> list[NodeRecord]:
    return [NodeRecord(**i) for i in items]


def _free_ports(k: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(k)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_monitors() -> set[int]:
    out = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("log_monitor.py" in part for part in (p.info["cmdline"] or [])):
            out.add(p.info["pid"])
    return out


def _raylet(port: int) -> int | None:
    flag = f"--node_manager_port={port}"
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.info["name"] == "raylet" and flag in (p.info["cmdline"] or []):
            return p.info["pid"]
    return None


def start_worker(node: NodeRecord, gcs_address: str, ray_bin: str, env: dict[str, str],
                 num_cpus: int | None = None) -> NodeRecord:
    """``ray start`` for a worker joining ``gcs_address`` with its regions' resources."""
    nm, om, agent, agent_grpc, runtime_env, metrics = _free_ports(6)
    cmd = [ray_bin, "start", f"--address={gcs_address}", "--disable-usage-stats",
           f"--resources={json.dumps(node_capacity(node.regions))}",
           f"--object-store-memory={WORKER_OBJECT_STORE}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    before = _log_monitors()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start for {node.name} failed:\n{proc.stderr[-2000:]}")
    raylet = _raylet(nm)
    if raylet is None:
        raise RuntimeError(f"{node.name}: no raylet on node manager port {nm} after ray start")
    node.node_manager_port = nm
    node.pids = [raylet, *sorted(_log_monitors() - before)]
    return node


def alive(node: NodeRecord) -> bool:
    return bool(node.pids) and psutil.pid_exists(node.pids[0]) and _raylet(node.node_manager_port) == node.pids[0]


def kill(node: NodeRecord) -> int:
    """Lose the node at once: SIGKILL its raylet, every process under it (agents, workers,
    replicas, actors) and its log monitor. Returns how many processes were killed."""
    if node.head:
        raise ValueError("the head carries control and the GCS: stop the fleet instead")
    victims: list[psutil.Process] = []
    for pid in node.pids:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        victims.append(p)
        if pid == node.pids[0]:
            victims.extend(p.children(recursive=True))
    for p in victims:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(victims, timeout=5)
    node.pids = []
    return len(victims)
