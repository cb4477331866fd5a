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

from fleet.config import REPO_ROOT, load_regions
from fleet.runtime.local import free_port, ray_env

# Before anything imports ray (some test modules import Serve code): Ray reads its auth mode and
# Serve its ingress settings when first imported.
os.environ.update(ray_env())

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = "ctr/v1"  # the committed default model version
PACE_CATALOG = "synth:pacing:50:11"  # the control tests' campaigns (fleet.campaigns.synth)


def load_fixtures(kind: str) -> list[tuple[str, dict]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted((FIXTURES / kind).glob("*.json"))]


@pytest.fixture(scope="session")
def regions():
    return load_regions()


def serve_test_config(model_version: str = MODEL) -> dict:
    """serve_config.yaml as ``serve deploy`` would apply it, with two changes for the tests.

    The three regions price by rule and without the cache (the fixture corpus states rule
    prices exactly, and a cache miss would scale them by the default multiplier); two more
    applications serve us-east with model pricing and the region's cache shards: in-process
    under /model/us-east, and through its inference deployment (batched, multiplexed) under
    /remote/us-east.
    """
    cfg = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    for app in cfg["applications"]:
        if not app["import_path"].startswith("fleet.serve.region_app"):
            continue
        app["args"]["model"] = None
        app["args"]["cache"] = False
        app["args"]["control"] = False  # a local allowance: the corpus's bids need no lease
        for d in app.get("deployments", []):
            d["user_config"] = {"model": None}
    cfg["applications"].append({
        "name": "model-us-east", "route_prefix": "/model/us-east",
        "import_path": "fleet.serve.region_app:build_app", "args": {"region": "us-east", "control": False},
        "deployments": [{"name": "ingress-us-east", "user_config": {"model": model_version}}],
    })
    cfg["applications"].append({
        "name": "remote-us-east", "route_prefix": "/remote/us-east",
        "import_path": "fleet.serve.region_app:build_app", "args": {"region": "us-east", "pricing": "remote", "control": False},
        "deployments": [{"name": "ingress-us-east", "user_config": {"model": MODEL}}],
    })
    cfg.pop("http_options", None)
    return cfg


def serve_test_config_with_control(user_config: dict | None = None) -> dict:
    """The session's applications plus the three regions again under /pace/<region>, spending
    under control's leases (the control app is in serve_config.yaml already)."""
    cfg = serve_test_config()
    for region in load_regions().regions:
        cfg["applications"].append({
            "name": f"pace-{region}", "route_prefix": f"/pace/{region}",
            "import_path": "fleet.serve.region_app:build_app",
            "args": {"region": region, "catalog": PACE_CATALOG, "cache": False, "control": True,
                     "route_prefix": f"/pace/{region}"},
            "deployments": [{"name": f"ingress-{region}", "user_config": user_config or {"model": None}}],
        })
    return cfg


def deploy_config(cfg: dict) -> None:
    """What ``serve deploy`` does through the dashboard: apply a declarative config."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(cfg))


class RedisServer:
    """A real redis-server of the test session's own (AOF persistence in a temporary dir) that
    tests may stop and start again on the same port and data."""

    def __init__(self, data_dir: Path):
        from fleet.runtime.local import start_redis

        self.data_dir = data_dir
        self.url, _, self.proc = start_redis(data_dir)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def start(self) -> None:
        from fleet.runtime.local import start_redis

        self.url, _, self.proc = start_redis(self.data_dir, self.port)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def redis_srv(tmp_path):
    """A redis-server of the test's own (the tests that stop and restart it, or want it empty)."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.proc.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.proc.kill()


@pytest.fixture(scope="session")
def fleet_http(redis_server):
    """Base URL of a live fleet: every region deployed on a real Ray Serve HAProxy ingress, its
    cache shards writing through to the session's real redis-server."""
    import ray
    from ray import serve

    from fleet.cli.common import wait_ready

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "REDIS_URL": redis_server.url}})
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy_config(serve_test_config())
        base = f"http://127.0.0.1:{port}"
        prefixes = [a["route_prefix"] for a in serve_test_config()["applications"]]
        assert wait_ready(base, prefixes, 180), "regions did not become ready"
        yield base
    finally:
        release_shared_ray()


def isolated_fleet(state_dir: Path) -> tuple[dict, Path, int]:
    """What a test needs to run the ``fleet`` CLI on a fleet of its own beside anything else on the
    box: ``serve_config.yaml`` on a free port written into ``state_dir``, and an environment with
    ``FLEET_STATE_DIR`` there and no inherited Ray address or Redis. Returns (env, config, port)."""
    cfg = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    config = state_dir / "serve_config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "REDIS_URL")}
    env["FLEET_STATE_DIR"] = str(state_dir)
    return env, config, port


def release_shared_ray() -> None:
    """Stop the session's Ray instance if it runs (guarded: ``serve.shutdown`` would start one)."""
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def pytest_collection_modifyitems(items):
    """Tests with a Ray cluster of their own run last: the shared instance stops before them (one
    Ray at a time on a small machine), and no test after them needs it again."""
    items.sort(key=lambda item: item.get_closest_marker("exclusive_ray") is not None)


@pytest.fixture(scope="module")
def exclusive_ray():
    release_shared_ray()
    yield


@pytest.fixture(scope="module")
def control_regions(fleet_http):
    """Base URL with /pace/<region> apps under control deployed for the module, then removed."""
    from fleet.cli.common import wait_ready

    deploy_config(serve_test_config_with_control())
    assert wait_ready(fleet_http, [f"/pace/{r}" for r in load_regions().regions] + ["/control"], 180)
    try:
        yield fleet_http
    finally:
        deploy_config(serve_test_config())  # back to the session's applications
