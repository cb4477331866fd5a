"""``fleet ledger ...``: a region's ledger consumer, IVT reversals, the reconciliation report."""

from __future__ import annotations

import os
import time

import click

from fleet.config import load_regions, resolve
from fleet.runtime import local


@click.group()
def ledger() -> None:
    """The event ledger: run a region's consumer, reconcile."""


def _redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        state = local.State.load()
        url = state.redis_url if state else ""
    if not url:
        raise click.ClickException("no Redis: set REDIS_URL or run `fleet up`")
    return url


@ledger.command("consume")
@click.option("--region", required=True)
@click.option("--consumer", default="c0", show_default=True, help="Name within the consumer group.")
@click.option("--expire-s", default=None, type=float, help="Notice window (default: regions.yaml).")
@click.option("--until-idle", is_flag=True, help="Stop once the stream is drained (tests, backfills).")
def ledger_consume(region, consumer, expire_s, until_idle):
    """Run a region's ledger consumer in the foreground (the fleet runs one per region as an
    actor; this is for operations and tests)."""
    import asyncio

    from fleet.ledger.consumer import LedgerConsumer

    expire = expire_s or load_regions().defaults.ledger.expire_s

    async def go():
        c = LedgerConsumer(region, _redis_url(), consumer=consumer, expire_s=expire)
        await c.ensure_group()
        try:
            if until_idle:
                await c.drain(block_ms=200)
            else:
                await c.run()
        finally:
            click.echo(f"applied {c.applied}, duplicates {c.duplicates}")
            await c.close()

    asyncio.run(go())


@ledger.command("ivt")
@click.option("--region", required=True)
@click.option("--campaign", default=None, help="The campaign the IVT report names (checked against the ledger's record).")
@click.argument("bids", nargs=-1, required=True)
def ledger_ivt(region, campaign, bids):
    """Reverse billed impressions found to be invalid traffic (the exchange's or a verifier's
    IVT report): an ``ivt`` event per bid into the region's stream; the ledger takes the billed
    spend back from the bid's own campaign and the day it counted on, once per bid however often
    this is run. Where ``--campaign`` disagrees with the ledger's record, the record wins."""
    import asyncio

    import redis

    from fleet.ledger.consumer import ledger_prefix
    from fleet.ledger.emitter import EventEmitter
    from fleet.ledger.events import Event

    url = _redis_url()
    p = ledger_prefix(region)
    try:
        records = [redis.Redis.from_url(url).hmget(f"{p}bid:{b}", "campaign", "billed") for b in bids]
    except redis.RedisError as exc:
        records = []
        click.echo(f"the ledger cannot be read ({exc}): reversals sent unchecked")
    for b, (own, billed) in zip(bids, records):
        own = own.decode() if own else None
        if billed is None:
            click.echo(f"{b}: no bill counted for it yet: reversed if its bill is ahead in the stream, "
                       "else run this again once it is counted")
        if campaign and own and own != campaign:
            click.echo(f"{b}: the ledger has it under campaign {own}, not {campaign}: reversed from {own}")

    async def go():
        em = EventEmitter(region, url, resolve(load_regions().defaults.ledger.spill_dir) / f"{region}-cli.bin")
        now = time.time()
        em.emit_many([Event(f"ivt:{b}", "ivt", now, region, b, campaign=campaign or "") for b in bids])
        await em.close()
        click.echo(f"{len(bids)} reversal(s) sent; spilled: {em.summary()['spill_bytes']} bytes")

    asyncio.run(go())


@ledger.command("report")
@click.option("--region", required=True)
@click.option("--window", "window_s", default=600, show_default=True, help="Seconds per window.")
@click.option("--tolerance", default=None, type=float, help="Drift flagged beyond (default: regions.yaml).")
@click.option("--json", "as_json", is_flag=True)
def ledger_report(region, window_s, tolerance, as_json):
    """Per campaign and window: selected, won, billed, reserved vs finalized spend; flags
    (billed>won, won>selected, billed_after_lost, unpriced); per campaign today, pacing's view
    (billed under control, reserved under the local allowance) vs the ledger's same figure, drift
    beyond the tolerance flagged."""
    import json
    import time

    import redis

    from fleet.ledger.report import report

    tol = tolerance if tolerance is not None else load_regions().defaults.ledger.drift_tolerance
    doc = report(redis.Redis.from_url(_redis_url()), region, window_s, tol)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{'campaign':<22}{'window (UTC)':<18}{'sel':>6}{'won':>6}{'bill':>6}{'lost':>6}{'exp':>5}"
               f"{'reserved':>11}{'released':>11}{'spend':>10}  flags")
    for r in doc["rows"]:
        when = time.strftime("%m-%d %H:%M", time.gmtime(r["window"]))
        click.echo(f"{r['campaign']:<22}{when:<18}{r['selected']:>6}{r['won']:>6}{r['billed']:>6}{r['lost']:>6}"
                   f"{r['expired']:>5}{r['reserved']:>11.4f}{r['released']:>11.4f}{r['spend']:>10.4f}  "
                   f"{','.join(r['flags'])}")
    click.echo("\ntoday: pacing's view vs the ledger's (billed: finalized spend for today's bids; reserved: reservations)")
    for cid, t in doc["today"].items():
        views = "  ".join(f"{k} pacing {v['pacing']:.4f} ledger {v['ledger']:.4f} ({v['drift']:.2%})"
                          for k, v in t["views"].items())
        click.echo(f"{cid:<22} {views}  open {t['open']:.4f}  finalized {t['finalized']:.4f}"
                   f"{'  DRIFT' if t['flag'] else ''}")
    click.echo(f"flagged: {', '.join(doc['flagged']) or 'none'}")
