"""The dashboard at /control/ in headless Chromium (Debian's ``chromium``) against a live fleet
under simulated traffic: every region and figure shows, and the figures update."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser

import httpx
import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.config import REPO_ROOT, load_regions

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Cells(HTMLParser):
    """data-region / data-campaign rows and their data-field cells, from the dumped DOM."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.row = None
        self.field = None
        self.status = None
        self.attrs: dict[str, dict] = {}
        self.texts: dict[str, str] = {}
        self.current_id = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.attrs[a["id"]] = a
            self.current_id = a["id"] if tag == "span" else None
        if tag == "tr" and ("data-region" in a or "data-campaign" in a):
            self.row = a.get("data-region") or a.get("data-campaign")
            self.rows[self.row] = {}
        elif tag == "td" and self.row is not None:
            self.field = a.get("data-field")
            if a.get("class") in ("healthy", "degraded", "unhealthy"):
                self.field = "health"

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None
        if tag == "td":
            self.field = None

    def handle_data(self, data):
        if self.current_id is not None:
            self.texts[self.current_id] = self.texts.get(self.current_id, "") + data.strip()
            self.current_id = None
        if self.row is not None and self.field:
            self.rows[self.row][self.field] = self.rows[self.row].get(self.field, "") + data.strip()


def _chromium(url: str, *extra: str, budget_ms: int = 9000) -> str:
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", "--window-size=1400,2200", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_dashboard_shows_every_region_and_figure_and_updates(control_regions, tmp_path):
    assert CHROMIUM, "chromium is missing: `python3 fleet/bootstrap.py test` installs it (apt)"
    from fleet.control.auth import load_token
    from fleet.sim.burst import run_burst

    base = control_regions
    token = load_token()
    regions = list(load_regions().regions)
    now = time.time()
    for c in load_catalog("synth:pacing:50:11"):
        httpx.put(f"{base}/control/v1/campaigns/{c.id}", headers={"authorization": f"Bearer {token}"},
                  json={"budget": 500.0, "start": now, "end": now + 600, "curve": "even", "daily": False},
                  timeout=5.0).raise_for_status()
    load = threading.Thread(target=lambda: asyncio.run(run_burst(
        base, {r: f"/pace/{r}" for r in regions}, n=900, rate=25.0, seed=21)))
    load.start()
    try:
        time.sleep(6.0)  # a few heartbeats in
        url = f"{base}/control/#token={token}"
        first = Cells()
        first.feed(_chromium(url, "--dump-dom"))
        shot = tmp_path / "dashboard.png"
        _chromium(url, f"--screenshot={shot}")
        time.sleep(4.0)
        second = Cells()
        second.feed(_chromium(url, "--dump-dom"))
    finally:
        load.join()
    keep = REPO_ROOT / ".fleet" / "dashboard.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copy(shot, keep)
    print(f"screenshot: {keep}")
    assert shot.stat().st_size > 10_000
    for page in (first, second):
        # It polled and re-rendered more than once within one page load.
        assert int(page.attrs["updates"]["data-updates"]) >= 2
        for r in regions:
            row = page.rows[r]
            assert row["health"] in ("healthy", "degraded"), row
            for field in ("rate", "p50", "p99", "late", "bid-rate", "win-rate", "degraded", "errors"):
                assert row[field] not in ("", "–"), (r, field, row)
            assert float(row["rate"]) > 0
        # The fifty campaigns this test gave flights (control also holds the catalog's daily ones).
        campaigns = [k for k in page.rows if k.startswith("p") and k not in regions]
        assert len(campaigns) == 50 and all(page.rows[c]["spent"] not in ("", "–") for c in campaigns)
    # The figures move between loads as traffic goes on (the burst sends no notices, so spend
    # stays put here: the pacing run covers spend).
    assert first.texts["updated"] != second.texts["updated"]
    assert any(first.rows[r][f] != second.rows[r][f] for r in regions for f in ("rate", "p50", "p99"))


def test_dashboard_page_needs_no_token_but_its_data_does(control_regions):
    page = httpx.get(f"{control_regions}/control/")
    assert page.status_code == 200 and "fleet control" in page.text
    assert re.search(r"default-src 'self'", page.headers["content-security-policy"])
    assert httpx.get(f"{control_regions}/control/v1/dashboard").status_code == 401
