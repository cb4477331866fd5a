"""``fleet sim ...``: simulated exchange traffic against the running fleet."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import click

from fleet.cli.common import http_base, is_region, regions_of, serve_config
from fleet.cli.up import down, up
from fleet.config import REPO_ROOT
from fleet.runtime import local


@click.group()
def sim():
    """Simulated exchange traffic."""


@sim.command("burst")
@click.option("--requests", "n", default=300, show_default=True)
@click.option("--rate", default=150.0, show_default=True)
@click.option("--base", default=None, help="Ingress URL (default: the running fleet's).")
@click.option("--seed", default=1, show_default=True)
def sim_burst(n, rate, base, seed):
    """Send a burst to every region of serve_config.yaml and print the tally."""
    from fleet.sim.burst import format_table, run_burst

    cfg = serve_config("serve_config.yaml")
    state = local.State.load()
    base = base or (state.http if state else http_base(cfg))
    tallies = asyncio.run(run_burst(base, regions_of(cfg), n, rate, seed))
    click.echo(format_table(tallies))
    if any(t.answered < t.sent for t in tallies):
        sys.exit(1)


@sim.command("run")
@click.option("--duration", default=180.0, show_default=True, help="Seconds (one compressed day).")
@click.option("--rate", default=60.0, show_default=True, help="Mean auctions/s over all regions.")
@click.option("--seed", default=7, show_default=True)
@click.option("--drop-rate", default=0.05, show_default=True)
@click.option("--dup-rate", default=0.05, show_default=True)
@click.option("--late-rate", default=0.05, show_default=True)
@click.option("--cross-region", default=0.1, show_default=True, help="Share of auctions from a far exchange.")
@click.option("--label", default="rule", show_default=True, help="Names the result files.")
@click.option("--base", default=None, help="Ingress URL (default: the running fleet's).")
@click.option("--up", "bring_up", is_flag=True, help="Bring the fleet up first and down after.")
@click.option("--fresh", is_flag=True, help="With --up: the local Redis starts empty (no spend, leases or "
              "profiles left by an earlier run).")
@click.option("--rule", is_flag=True, help="With --up: the rule-pricing baseline (serve_config.yaml with "
              "every region's model off, deployed from a generated copy).")
@click.option("--partners", "partners", type=click.Choice(["none", "sim"]), default="none", show_default=True,
              help="With --up: the fleet calls the simulated demand partners (fleet up --partners sim); their "
                   "wins are scored apart (scorecard partners, with_partners).")
def sim_run(duration, rate, seed, drop_rate, dup_rate, late_rate, cross_region, label, base, bring_up, fresh,
            rule, partners="none"):
    """Simulated exchanges against the fleet, then the economic scorecard (bench/results/)."""
    from fleet.sim.exchange import SimConfig
    from fleet.sim.run import run_sim

    ctx = click.get_current_context()
    started = bring_up and local.State.load() is None  # a fleet already up is used, and left up
    if started:
        config_path = str(_rule_config()) if rule else "serve_config.yaml"
        ctx.invoke(up, config_path=config_path, detach=True, burst=False, fresh=fresh, partners=partners)
    elif rule or partners != "none":
        click.echo("--rule and --partners apply only to a fleet this command brings up (--up, none running)",
                   err=True)
    try:
        state = local.State.load()
        base = base or (state.http if state else http_base(serve_config("serve_config.yaml")))
        cfg = SimConfig(base_url=base, duration_s=duration, rate=rate, seed=seed, drop_rate=drop_rate,
                        dup_rate=dup_rate, late_rate=late_rate, cross_region_share=cross_region)
        doc = run_sim(cfg, REPO_ROOT / "bench" / "results", label=label, progress=click.echo)
    finally:
        if started:
            ctx.invoke(down)
    card = doc["scorecard"]
    click.echo(f"\ntraffic: {doc['traffic']}")
    click.echo(f"notices delivered: {doc['notices']['delivered']}")
    for who in ("fleet", "oracle_at_fleet_spend", "oracle"):
        s = card[who]
        click.echo(f"{who:<21} wins {s['wins']:6d}  spend ${s['spend_usd']:9.2f}  value ${s['value_usd']:9.2f}  "
                   f"surplus ${s['surplus_usd']:9.2f}  value/$ {s['value_per_dollar']:.3f}  "
                   f"clicks/$ {s['clicks_per_dollar']:.3f}  win rate {s['win_rate']:.3f}")
    click.echo(f"fleet / oracle at the fleet's spend: {card['headline']['fleet_vs_oracle_at_fleet_spend']}")
    click.echo(f"fleet / oracle (budgets only): {card['fleet_vs_oracle']}")
    if card["partners"]["wins"]:
        click.echo(f"partners (apart from the oracle): {card['partners']}; with them: {card['with_partners']}")
    click.echo(f"targeting: {card['targeting']}")
    for k, b in card["by_latency"].items():
        click.echo(f"  {k:>10}: {b}")
    click.echo(f"results: bench/results/sim-{label}.json and .png plots")


def _rule_config():
    """serve_config.yaml with every region's model off (its args and user_config): rule pricing."""
    import yaml

    cfg = serve_config("serve_config.yaml")
    for app in cfg["applications"]:
        if is_region(app):
            app.setdefault("args", {})["model"] = None
            for dep in app.get("deployments") or ():
                dep.setdefault("user_config", {})["model"] = None
    path = local.STATE_DIR / "serve_config.rule.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@sim.command("pacing")
@click.option("--day", "day_s", default=300.0, show_default=True, help="Seconds of the compressed day.")
@click.option("--rate", default=150.0, show_default=True, help="Mean auctions/s over all regions.")
@click.option("--probe", "probe_s", default=30.0, show_default=True, help="Seconds of the flat probe.")
@click.option("--fill", default=0.35, show_default=True, help="Budgets as a share of the probe's spend rate.")
@click.option("--campaigns", "n", default=50, show_default=True, help="Campaigns (synth:pacing:<n>:11).")
@click.option("--kill-control", is_flag=True, help="Kill the control actor at mid-day.")
@click.option("--label", default="pacing", show_default=True)
@click.option("--up", "bring_up", is_flag=True, help="Bring the fleet up (with the pacing catalog) and down after.")
def sim_pacing(day_s, rate, probe_s, fill, n, kill_control, label, bring_up):
    """A compressed day through the real endpoints with budgets set through control's API;
    delivery, pacing error and the lease bound (bench/results/<label>.json and .png)."""
    from fleet.campaigns.catalog import load_catalog
    from fleet.config import load_regions
    from fleet.control.auth import load_token
    from fleet.sim.pacing import run_pacing, write

    catalog = f"synth:pacing:{n}:11"
    ctx = click.get_current_context()
    if bring_up and local.State.load() is None:
        ctx.invoke(up, detach=True, burst=False, catalog=catalog, fresh=True)
    try:
        state = local.State.load()
        base = state.http if state else http_base(serve_config("serve_config.yaml"))
        on_mid = None
        if kill_control:
            def on_mid():
                # From a process of its own: a Ray driver inside the load generator stalled its
                # event loop at the kill (requests in flight timed out client-side).
                proc = subprocess.run([sys.executable, "-m", "fleet.serve.control_actor", "kill"],
                                      capture_output=True, text=True, timeout=60,
                                      env={**os.environ, **local.ray_env()})
                return proc.stdout.strip() or f"kill failed: {proc.stderr[-500:]}"
        doc = asyncio.run(run_pacing(base, f"{base}/control", load_token(), load_regions(), load_catalog(catalog),
                                     day_s=day_s, rate=rate, probe_s=probe_s, fill=fill, on_mid=on_mid,
                                     progress=click.echo))
        doc["config"] = {"day_s": day_s, "rate": rate, "probe_s": probe_s, "fill": fill, "campaigns": n,
                         "kill_control": kill_control, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        paths = write(doc, REPO_ROOT / "bench" / "results", label)
    finally:
        if bring_up:
            ctx.invoke(down)
    click.echo(json.dumps({k: v for k, v in doc.items() if k not in ("series", "budgets", "finals")}, indent=1))
    click.echo("results: " + ", ".join(str(p) for p in paths))
