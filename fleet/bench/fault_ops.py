"""The fault bench's injectors: each does to a running local fleet what the fault does in production.

Those that need a Ray driver (a cache shard's pid or its delay) run as their own process
(``python -m fleet.bench.fault_ops ...``), as ``fleet.serve.control_actor kill`` does, so the
load generator never shares its interpreter with a driver. The others act on processes and files
directly: a replica found by its process title and SIGKILLed, the local Redis stopped and started
again on its port and data (the fleet's record updated, so ``fleet down`` stops the new one), a
region's Serve application removed by deploying the config without it, then deployed again, a
simulated demand partner (``fleet up --partners sim``) made to hang and answer again through its
admin route (``fleet.sim.partners.set_hang``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from fleet.runtime import local


def process_pids(tag: str) -> list[int]:
    """Processes whose command line holds ``tag`` (Ray titles a Serve replica
    ``ServeReplica:<app>:<deployment>``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return sorted(out)


def sigkill_replica(app: str, deployment: str) -> dict:
    pids = process_pids(f"ServeReplica:{app}:{deployment}")
    if not pids:
        return {"error": f"no replica process of {app}:{deployment}"}
    os.kill(pids[0], signal.SIGKILL)
    return {"killed_pid": pids[0], "replicas_before": len(pids)}


async def ray_op(*args: str, timeout: float = 60.0) -> dict:
    """Run ``python -m fleet.bench.fault_ops <args>`` (a Ray driver of its own); its last line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.bench.fault_ops", *args, env={**os.environ, **local.ray_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (err.decode() or out.decode())[-500:]}
    return yaml.safe_load(lines[-1])


# -- Redis ------------------------------------------------------------------------------------

def stop_redis() -> dict:
    """Stop the fleet's local Redis (SIGTERM: it flushes its append-only file, as a restart does)."""
    state = local.State.load()
    if state is None or not state.redis_pid:
        return {"error": "no Redis started by `fleet up` to stop (REDIS_URL set?)"}
    port = int(state.redis_url.rsplit(":", 1)[1].split("/")[0])
    local.stop_pid(state.redis_pid)
    return {"stopped_pid": state.redis_pid, "port": port}


def start_redis(port: int) -> dict:
    state = local.State.load()
    url, pid, _ = local.start_redis(local.STATE_DIR / "redis", port)
    if state is not None:
        state.redis_url, state.redis_pid = url, pid
        state.save()
    return {"started_pid": pid}


# -- a whole region ----------------------------------------------------------------------------

def deployed_config() -> Path:
    """What ``fleet up`` deployed (the bench always brings it up with a generated copy)."""
    gen = local.STATE_DIR / "serve_config.generated.yaml"
    return gen if gen.exists() else Path("serve_config.yaml")


def remove_region(region: str) -> dict:
    """The region's Serve application gone (the others unchanged): deploy the config without it."""
    from fleet.cli.up import deploy

    cfg = yaml.safe_load(deployed_config().read_text())
    cfg["applications"] = [a for a in cfg["applications"] if a["name"] != region]
    without = local.STATE_DIR / f"serve_config.without-{region}.yaml"
    without.write_text(yaml.safe_dump(cfg, sort_keys=False))
    deploy(str(without), os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"))
    return {"removed": region}


def restore_region(region: str) -> dict:
    from fleet.cli.up import deploy

    deploy(str(deployed_config()), os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"))
    return {"restored": region}


# -- a demand partner ----------------------------------------------------------------------------

def sim_partner_endpoints() -> dict[str, str]:
    """The simulated partners ``fleet up --partners sim`` started and has not stopped (its pid
    file is removed when they stop; their list may outlive them): id -> OpenRTB endpoint."""
    path = local.STATE_DIR / "partners.json"
    if not (local.STATE_DIR / "partners.pid").exists():
        return {}
    try:
        return {e["id"]: e["endpoint"] for e in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


async def hang_partner(pid: str, on: bool) -> dict:
    """Every call to the simulated partner ``pid`` hangs from now on (``on``), or is answered again."""
    from fleet.sim.partners import set_hang

    endpoint = sim_partner_endpoints().get(pid)
    if endpoint is None:
        return {"error": f"no simulated partner {pid!r}: the fleet is not up with --partners sim"}
    said = await set_hang(endpoint, on)
    return {"partner": pid, "hanging": said["hanging"], "held": said["held"]}


# -- the Ray-driver side (its own process) ------------------------------------------------------

def _driver(args: list[str]) -> dict:
    import ray

    from fleet.serve.cache_actor import NAMESPACE

    ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
    try:
        op = args[0]
        if op == "shard-kill":  # region, index: the process dies; Ray restarts it empty
            h = ray.get_actor(f"cache-{args[1]}-{args[2]}", namespace=NAMESPACE)
            pid = ray.get(h.pid.remote(), timeout=10)
            os.kill(pid, signal.SIGKILL)
            return {"killed_pid": pid, "shard": f"cache-{args[1]}-{args[2]}"}
        if op == "shard-delay":  # region, shards, seconds: every lookup of the region's shards this slow
            names = [f"cache-{args[1]}-{i}" for i in range(int(args[2]))]
            for n in names:
                ray.get(ray.get_actor(n, namespace=NAMESPACE).set_delay.remote(float(args[3])), timeout=10)
            return {"delayed": names, "delay_s": float(args[3])}
        raise SystemExit(f"unknown op {op}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    t0 = time.time()
    doc = _driver(sys.argv[1:])
    print(yaml.safe_dump({**doc, "took_s": round(time.time() - t0, 2)}, default_flow_style=True).strip())
