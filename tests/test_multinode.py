"""A fleet on a local Ray cluster of two nodes: each region on its own node, and a node lost.

`fleet up --nodes 2` (the real command, in a subprocess) starts a head carrying us-east and
ap-southeast plus control, and a worker carrying eu-west. Under steady traffic to every region
the worker is killed the way a machine is lost; the other regions must keep answering every
request, control's health view must call eu-west unhealthy (and only it), and once the node is
started again eu-west must come back on it and be healthy. Runs last (``exclusive_ray``): the
session's shared Ray instance is stopped first.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter

import httpx
import msgspec
import pytest

from fleet.config import REPO_ROOT, load_regions
from fleet.control.auth import load_token
from fleet.sim.traffic import RequestFactory
from conftest import isolated_fleet  # noqa: E402  (tests/conftest.py)

pytestmark = [pytest.mark.slow, pytest.mark.exclusive_ray]

FLEET = str(REPO_ROOT / ".venv" / "bin" / "fleet")
LOST = "eu-west"  # dealt to worker-1 by fleet.runtime.nodes.plan with 2 nodes


def fleet(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([FLEET, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert proc.returncode == 0, f"fleet {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, exclusive_ray):
    state_dir = tmp_path_factory.mktemp("fleet-state")
    env, config, port = isolated_fleet(state_dir)
    try:
        fleet(env, "up", "--nodes", "2", "--detach", "--no-burst", "--config", str(config), timeout=420)
        yield f"http://127.0.0.1:{port}", env
    finally:
        subprocess.run([FLEET, "down"], env=env, capture_output=True, timeout=120, cwd=REPO_ROOT)


def placement(env: dict) -> dict:
    return json.loads(fleet(env, "node", "list", "--json"))


def region_of(actor: str) -> str | None:
    """The region an actor of the fleet belongs to, from its name (replicas, shards, ledger)."""
    for region in load_regions().regions:
        if (actor.startswith(f"SERVE_REPLICA::{region}#") or actor.startswith(f"cache-{region}-")
                or actor == f"ledger-{region}"):
            return region
    return None


def assert_each_region_on_its_node(env: dict, timeout: float = 60) -> None:
    """Every process of every region on the node carrying the region (polled: a region's actors
    are created as its replica starts, so the last ones may still be on their way)."""
    end = time.monotonic() + timeout
    while True:
        try:
            return _each_region_on_its_node(placement(env))
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(2)


def _each_region_on_its_node(where: dict) -> None:
    seen = Counter()
    for node, info in where.items():
        assert info["alive"], f"{node} is down"
        for actor in info["actors"]:
            region = region_of(actor)
            if region is not None:
                assert region in info["regions"], f"{actor} runs on {node}, which carries {info['regions']}"
                seen[region] += 1
    for region in load_regions().regions:
        # the ingress replica, the cache shards and the ledger consumer
        assert seen[region] >= 2 + load_regions().regions[region].cache_shards, (region, where)
    assert "control" in where["head"]["actors"]
    assert any(a.startswith("SERVE_REPLICA::control#") for a in where["head"]["actors"])


class Traffic:
    """Steady auctions to every region, one client per region (a region that hangs must not
    starve the others' connections), each outcome stamped with the phase it was sent in."""

    def __init__(self, base: str, rate: float = 10.0):
        self.base, self.rate = base, rate
        self.phase = "before"
        self.outcomes: dict[tuple[str, str], Counter] = {}
        self.stop = False

    async def region(self, name: str, prefix: str) -> None:
        factory = RequestFactory(name, seed=17)
        url = f"{self.base}{prefix}/openrtb2/bid"
        async with httpx.AsyncClient(timeout=3.0) as client:
            while not self.stop:
                phase = self.phase
                body = msgspec.json.encode(factory.request())
                try:
                    r = await client.post(url, content=body, headers={"content-type": "application/json"})
                    outcome = r.status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.outcomes.setdefault((name, phase), Counter())[outcome] += 1
                await asyncio.sleep(1 / self.rate)

    def answered(self, region: str, phase: str) -> tuple[int, Counter]:
        c = self.outcomes.get((region, phase), Counter())
        return c[200] + c[204], c


async def health(client: httpx.AsyncClient, base: str) -> dict:
    r = await client.get(f"{base}/control/v1/health", headers={"authorization": f"Bearer {load_token()}"})
    r.raise_for_status()
    return r.json()


async def wait_for(pred, timeout: float, every: float = 1.0):
    """``pred()``'s first true answer within ``timeout`` (a probe that fails counts as not yet:
    the probe is not what is under test)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            out = await pred()
        except httpx.HTTPError:
            out = None
        if out:
            return out
        await asyncio.sleep(every)
    return None


def test_each_region_runs_on_its_node_and_a_lost_node_costs_only_its_region(two_nodes):
    base, env = two_nodes
    assert_each_region_on_its_node(env)
    regions = {name: spec.route_prefix for name, spec in load_regions().regions.items()}
    others = [r for r in regions if r != LOST]

    async def run() -> dict:
        traffic = Traffic(base)
        tasks = [asyncio.create_task(traffic.region(n, p)) for n, p in regions.items()]
        marks: dict = {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            await asyncio.sleep(5)
            assert all(v["status"] == "healthy" for v in (await health(client, base)).values())

            traffic.phase = "lost"
            await asyncio.to_thread(fleet, env, "node", "kill", "worker-1")

            async def lost_seen():
                h = await health(client, base)
                return h if h[LOST]["status"] == "unhealthy" else None

            marks["lost"] = await wait_for(lost_seen, 30)
            await asyncio.sleep(5)  # the other regions keep serving while eu-west is gone
            marks["lost_later"] = await health(client, base)

            traffic.phase = "restarting"
            await asyncio.to_thread(fleet, env, "node", "start", "worker-1")

            async def back():
                h = await health(client, base)
                r = await client.get(f"{base}{regions[LOST]}/ready")
                return h if h[LOST]["status"] == "healthy" and r.status_code == 200 else None

            marks["back"] = await wait_for(back, 120)
            traffic.phase = "after"
            await asyncio.sleep(5)
        traffic.stop = True
        await asyncio.gather(*tasks)
        marks["traffic"] = traffic
        return marks

    marks = asyncio.run(run())
    traffic: Traffic = marks["traffic"]
    print({f"{r}/{p}": dict(c) for (r, p), c in sorted(traffic.outcomes.items())})

    # Lost: control calls eu-west unhealthy for want of heartbeats, and only eu-west.
    assert marks["lost"] is not None, "control never reported the lost region unhealthy"
    assert "no heartbeat" in marks["lost"][LOST]["reason"]
    for h in (marks["lost"], marks["lost_later"]):
        assert all(h[r]["status"] == "healthy" for r in others), h
    # The other regions answered every auction, before, during and after the loss.
    for r in others:
        for phase in ("before", "lost", "restarting", "after"):
            answered, outcomes = traffic.answered(r, phase)
            assert answered > 0 and answered == sum(outcomes.values()), (r, phase, outcomes)
    # The lost region failed while its node was gone, and serves again once it is back.
    assert traffic.answered(LOST, "before")[0] == sum(traffic.answered(LOST, "before")[1].values())
    assert marks["back"] is not None, "eu-west did not come back after its node restarted"
    answered, outcomes = traffic.answered(LOST, "after")
    assert answered > 0 and answered == sum(outcomes.values()), outcomes
    # ... on its own node again.
    assert_each_region_on_its_node(env)
