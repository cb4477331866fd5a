"""What several of the ``fleet`` command groups share: the Serve config file and what it names
(regions, control, the ingress URL), readiness of the deployed routes, and the environment every
process of the fleet is started with."""

from __future__ import annotations

import os
import time

import httpx
import yaml

from fleet.config import resolve
from fleet.runtime import local


def serve_config(path: str) -> dict:
    with open(resolve(path)) as fh:
        return yaml.safe_load(fh)


def http_base(cfg: dict) -> str:
    opts = cfg.get("http_options", {})
    host = opts.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{host}:{opts.get('port', 8000)}"


def wait_ready(base: str, prefixes: list[str], timeout: float) -> bool:
    """Every region's ``/ready`` answers 200 (so the ingress routes to a live replica)."""
    pending = set(prefixes)
    end = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while pending and time.monotonic() < end:
            for p in list(pending):
                try:
                    if client.get(f"{base}{p}/ready").status_code == 200:
                        pending.discard(p)
                except httpx.HTTPError:
                    pass
            if pending:
                time.sleep(0.5)
    return not pending


def is_region(app: dict) -> bool:
    return app["import_path"].startswith("fleet.serve.region_app")


def regions_of(cfg: dict) -> dict[str, str]:
    return {app["name"]: app["route_prefix"] for app in cfg["applications"] if is_region(app)}


def control_of(cfg: dict) -> str | None:
    return next((app["route_prefix"] for app in cfg["applications"]
                 if app["import_path"].startswith("fleet.serve.control_app")), None)


def export_fleet_env(state: local.State) -> None:
    """What every process of the fleet needs in its environment, on every node: Redis, the one
    notice-signing key set, control's token. A node started later gets the same (``fleet node
    start``), read from the same files."""
    os.environ["REDIS_URL"] = state.redis_url
    if not os.environ.get("FLEET_NOTICE_KEYS"):
        from fleet.ledger.signing import load_keys

        os.environ["FLEET_NOTICE_KEYS"] = ",".join(f"{k}:{v.hex()}" for k, v in load_keys().items())
    if not os.environ.get("FLEET_CONTROL_TOKEN"):
        from fleet.control.auth import load_token

        os.environ["FLEET_CONTROL_TOKEN"] = load_token()
