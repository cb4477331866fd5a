"""The dashboard's demand-partner panel: control's ``/v1/dashboard`` document (a real ``Control``
fed region reports) rendered by the real page in headless Chromium (Debian's ``chromium``),
served by a local HTTP server: every region's partners with their participation counters."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fleet.config import REPO_ROOT, load_regions
from fleet.control.api import route
from fleet.control.messages import Report
from fleet.control.service import Control
from fleet.harness.pacing_loop import Clock
from fleet.partners.messages import PartnerTierStats

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FIELDS = ("eligible", "called", "in-time", "late", "participating", "won", "errors")


class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.regions: list[str] = []
        self.row = self.field = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-partner" in a:
            self.row = a["data-partner"]
            self.rows[self.row] = {}
        elif tag == "tr" and "data-partner-region" in a:
            self.regions.append(a["data-partner-region"])
        elif tag == "td" and self.row is not None:
            self.field = a.get("data-field")

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None
        if tag == "td":
            self.field = None

    def handle_data(self, data):
        if self.row is not None and self.field:
            self.rows[self.row][self.field] = self.rows[self.row].get(self.field, "") + data.strip()


def _doc() -> dict:
    clock = Clock()
    control = Control(load_regions(), None, clock=clock)

    async def go():
        await control.start()
        for region, scale in (("us-east", 1), ("eu-west", 2)):
            partners = {"fast": {"premium": PartnerTierStats(eligible=120 * scale, called=100 * scale, in_time=97 * scale,
                                                             late=3 * scale, participating=60 * scale, won=20 * scale,
                                                             p95_ms=9.5, value_won=30.0, cutoff_ms=80.0)},
                        "slow": {"remnant": PartnerTierStats(eligible=50 * scale, called=40 * scale, in_time=30 * scale,
                                                             late=9 * scale, errors=1 * scale, participating=5 * scale,
                                                             won=1, p95_ms=70.0, value_won=1.0, cutoff_ms=80.0)}}
            await control.sync(Report(region=region, replica="r1", ts=clock(), partners=partners))
        clock.t += control.settings.policy_every_s + 1
        await control.tick(1.0)
        await route(control, "PUT", "/v1/partners/fast/standard", body=b'{"cutoff_ms": 42}', idem="p")
        return control.dashboard()

    return asyncio.run(go())


def test_the_dashboard_shows_each_regions_partners_and_their_counters(tmp_path):
    assert CHROMIUM, "chromium is missing: `python3 fleet/bootstrap.py test` installs it (apt)"
    doc = _doc()
    assert doc["regions"]["eu-west"]["partners"]["fast"]["called"] == 200  # the stats endpoint's figures
    page = (REPO_ROOT / "fleet" / "control" / "dashboard.html").read_bytes()
    body = json.dumps(doc).encode()

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            out, ctype = (body, "application/json") if self.path.startswith("/control/v1/dashboard") else (page, "text/html")
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/control/#token=t"
        out = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--virtual-time-budget=3000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-2000:]
    rows = Rows()
    rows.feed(out.stdout)
    assert set(load_regions().regions) <= set(rows.regions)  # every region has its section
    for region in ("us-east", "eu-west"):
        for pid in ("fast", "slow"):
            got, want = rows.rows[f"{region}/{pid}"], doc["regions"][region]["partners"][pid]
            assert {f: int(got[f]) for f in FIELDS} == {f: want[f.replace("-", "_")] for f in FIELDS}, (region, pid)
    assert rows.rows["eu-west/fast"]["called"] == "200" and rows.rows["us-east/slow"]["late"] == "9"
    policy = rows.rows["us-east/fast"]["policy"]
    assert "premium 80·1.00" in policy and "standard 42·1.00 (pinned)" in policy
    assert "remnant" in rows.rows["us-east/slow"]["policy"] and "·0.10" in rows.rows["us-east/slow"]["policy"]
