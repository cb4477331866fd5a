"""Stage 6 through the real Ray Serve ingress, with the eight simulated partners.

The partners (``fleet.sim.partners.SET``: fast, medium, slow, flaky, hanging, garbage, a deal-only
one and one bidding in EUR over OpenRTB 2.5 with gzip) run as real HTTP servers in this process;
a us-east region app deployed beside the session's fleet calls them. Every answer is a 200 or a
204 (nothing a partner does is a 5xx), the region's counts per partner equal what each server
saw, the hanging partner's calls end late while it still holds them, the garbage partner's bids
are dropped by reason, and a partner bid that wins leaves under our notice URLs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.config import REPO_ROOT
from fleet.sim.partners import PartnerServers, region_entries

from conftest import deploy_config, serve_test_config

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures" / "requests"
PREFIX = "/partners/us-east"


class ServersThread:
    """The partner servers on an event loop of their own (the test's HTTP client is sync)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers = PartnerServers()
        asyncio.run_coroutine_threadsafe(self.servers.start(), self.loop).result(10)

    def seen(self) -> dict[str, int]:
        return asyncio.run_coroutine_threadsafe(self._seen(), self.loop).result(5)

    async def _seen(self):
        return self.servers.seen()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.servers.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def partners_region(fleet_http, tmp_path_factory):
    from fleet.cli.common import wait_ready

    servers = ServersThread()
    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    raw["regions"]["us-east"]["partners"] = region_entries(servers.servers)
    path = tmp_path_factory.mktemp("partners") / "regions.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = serve_test_config()
    cfg["applications"].append({
        "name": "partners-us-east", "route_prefix": PREFIX, "import_path": "fleet.serve.region_app:build_app",
        "args": {"region": "us-east", "regions_file": str(path), "cache": False, "control": False,
                 "route_prefix": PREFIX},
        "deployments": [{"name": "ingress-us-east", "user_config": {"model": None}}],
    })
    deploy_config(cfg)
    try:
        assert wait_ready(fleet_http, [PREFIX], 180)
        yield fleet_http + PREFIX, servers
    finally:
        deploy_config(serve_test_config())
        servers.stop()


def _request(name: str, rid: str) -> bytes:
    req = copy.deepcopy(json.loads((FIXTURES / name).read_text())["request"])
    req["id"] = rid
    return json.dumps(req).encode()


def test_eight_partners_through_the_ingress(partners_region):
    base, servers = partners_region
    statuses, partner_wins = [], 0
    with httpx.Client(timeout=10.0) as client:
        for i in range(120):
            name = "deal_wins.json" if i % 4 == 0 else "banner_site_us.json"
            r = client.post(f"{base}/openrtb2/bid", content=_request(name, f"ing-{i}"),
                            headers={"content-type": "application/json", "x-openrtb-version": "2.6"})
            statuses.append(r.status_code)
            if r.status_code == 200:
                bid = r.json()["seatbid"][0]["bid"][0]
                assert "/notice/win" in bid["nurl"]
                assert "partner.invalid" not in r.text  # their URLs never in our answer
                partner_wins += bid["ext"]["pricing"].startswith("partner:")
        for _ in range(100):  # until each server has taken in what was put on the wire to it
            stats = client.get(f"{base}/stats").json()
            seen = servers.seen()
            if all(seen.get(pid, 0) >= row["called"] for pid, row in stats["partners"].items()):
                break
            time.sleep(0.05)
    assert set(statuses) <= {200, 204}, statuses
    part = stats["partners"]
    assert set(part) == set(seen) == {"fast", "medium", "slow", "flaky", "hanging", "garbage", "dealer", "euro"}
    for pid, row in part.items():
        assert row["called"] == seen[pid], (pid, row, seen[pid])
        assert row["called"] == row["in_time"] + row["late"] + row["errors"], (pid, row)
        assert row["won"] <= row["participating"] <= row["in_time"]
    assert part["dealer"]["eligible"] == 30  # the deal requests only: premium is its one tier
    assert part["hanging"]["late"] > 0 and part["flaky"]["errors"] > 0
    assert sum(part["garbage"]["dropped"].values()) + part["garbage"]["errors"] > 0
    assert part["euro"]["in_time"] > 0 and part["fast"]["participating"] > 0
    assert partner_wins == sum(row["won"] for row in part.values())
    assert sum(b["requests"] for b in stats["partner_participation"].values()) == 120
