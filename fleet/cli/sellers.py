"""``fleet sellers``: the supply-chain systems' sellers.json files, kept as local files.

The bid path reads them once when a region starts (``fleet.pipeline.supply_chain``) and never
fetches anything; this command is how they are refreshed (by an operator or a cron job), then
a region restart (or a redeploy) picks the new files up.
"""

from __future__ import annotations

import click
import httpx

from fleet.config import load_regions
from fleet.pipeline import supply_chain


@click.group()
def sellers() -> None:
    """sellers.json files of the supply-chain systems (regions.yaml admission.sellers)."""


@sellers.command()
@click.option("--regions-file", default="regions.yaml", show_default=True)
@click.option("--timeout", default=10.0, show_default=True, help="seconds per fetch")
def refresh(regions_file: str, timeout: float) -> None:
    """Fetch each system's https://<asi>/sellers.json and replace its local file when it parses."""
    files = load_regions(regions_file).admission.sellers

    def fetch(url: str) -> bytes:
        r = httpx.get(url, timeout=timeout, follow_redirects=True)
        r.raise_for_status()
        return r.content

    failed = 0
    for asi, outcome in supply_chain.refresh(files, fetch).items():
        click.echo(f"{asi}: {outcome}")
        failed += outcome != "ok"
    if failed:
        raise SystemExit(1)
