"""Shared fixtures: one Ray instance and one deployed fleet per test session.

Starting Ray and Serve costs seconds, so the whole session shares one instance, started with
the same ingress settings as ``fleet up`` (HAProxy direct ingress, throughput-optimised Serve)
and every region of ``serve_config.yaml`` deployed through the same app builder. Tests that use
it are marked ``slow``; they still run in CI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fleet.config import REPO_ROOT, RegionAppArgs, load_regions

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixtures(kind: str) -> list[tuple[str, dict]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted((FIXTURES / kind).glob("*.json"))]


@pytest.fixture(scope="session")
def regions():
    return load_regions()


@pytest.fixture(scope="session")
def fleet_http():
    """Base URL of a live fleet: every region deployed on a real Ray Serve HAProxy ingress."""
    from fleet.runtime.local import free_port, ray_env

    os.environ.update(ray_env())
    import ray
    from ray import serve

    from fleet.cli import wait_ready
    from fleet.serve import region_app

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
        for app in cfg["applications"]:
            serve.run(region_app.build_app(RegionAppArgs(**app["args"])), name=app["name"],
                      route_prefix=app["route_prefix"], blocking=False)
        base = f"http://127.0.0.1:{port}"
        prefixes = [a["route_prefix"] for a in cfg["applications"]]
        assert wait_ready(base, prefixes, 180), "regions did not become ready"
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()
