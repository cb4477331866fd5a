"""The ``fleet`` command: up, down, status, sim, bench, model, ledger, node.

``up`` uses REDIS_URL and RAY_ADDRESS when set and starts local ones otherwise (the embedded
default), deploys ``serve_config.yaml``, waits for every region, prints the endpoints, sends a
short burst of simulated exchange traffic, and stays in the foreground until interrupted
(``--detach`` returns instead). ``down`` stops only what ``up`` started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import click
import httpx
import yaml

from fleet.config import REPO_ROOT, load_regions, resolve
from fleet.runtime import local, nodes, placement


def _serve_config(path: str) -> dict:
    with open(resolve(path)) as fh:
        return yaml.safe_load(fh)


def _http_base(cfg: dict) -> str:
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


def deploy(config_path: str, dashboard: str, timeout: float = 120.0) -> None:
    """``serve deploy``, retried while the dashboard's REST API is still starting."""
    end = time.monotonic() + timeout
    while True:
        env = os.environ if os.environ.get("RAY_ADDRESS") else {**os.environ, **local.ray_env()}
        proc = subprocess.run([local.venv_bin("serve"), "deploy", str(resolve(config_path)), "-a", dashboard],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=env)
        if proc.returncode == 0:
            return
        if time.monotonic() > end:
            raise click.ClickException(f"serve deploy failed:\n{proc.stderr[-2000:]}")
        time.sleep(2.0)


def _is_region(app: dict) -> bool:
    return app["import_path"].startswith("fleet.serve.region_app")


def _regions_of(cfg: dict) -> dict[str, str]:
    return {app["name"]: app["route_prefix"] for app in cfg["applications"] if _is_region(app)}


def _control_of(cfg: dict) -> str | None:
    return next((app["route_prefix"] for app in cfg["applications"]
                 if app["import_path"].startswith("fleet.serve.control_app")), None)


def generated_config(cfg: dict, catalog: str | None, n_nodes: int, replicas: int | None = None) -> dict:
    """``serve_config.yaml`` as ``up`` deploys it: another catalog everywhere, another number of
    ingress replicas per region, and on several nodes every region pinned to its node's resource,
    control to the head, and Serve's ingress on the head only (the nodes share one host, so one
    ingress port)."""
    cfg = json.loads(json.dumps(cfg))
    for app in cfg["applications"]:
        args = app.setdefault("args", {})
        if catalog:
            args["catalog"] = catalog
        if replicas and _is_region(app):
            for dep in app.setdefault("deployments", [{"name": f"ingress-{args['region']}"}]):
                if dep["name"].startswith("ingress-"):
                    dep["num_replicas"] = replicas
        if n_nodes > 1 and _is_region(app):
            args["region_resource"] = True
        if n_nodes > 1 and app["import_path"].startswith("fleet.serve.control_app"):
            args["head"] = True
    if n_nodes > 1:
        cfg["proxy_location"] = "HeadOnly"
    return cfg


@click.group()
def main() -> None:
    """Edge bidder fleet on Ray Serve."""


@main.command()
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True)
@click.option("--detach", is_flag=True, help="Return once every region is ready.")
@click.option("--burst/--no-burst", default=True, show_default=True,
              help="Send a short burst of simulated exchange traffic once ready.")
@click.option("--burst-requests", default=300, show_default=True, help="Requests per region.")
@click.option("--burst-rate", default=100.0, show_default=True, help="Requests/s per region.")
@click.option("--num-cpus", type=int, default=None, help="CPUs for a local Ray head.")
@click.option("--timeout", default=240.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--catalog", default=None, help="Another campaign catalog for every region and control "
              "(a file, or synth:pacing:<n>:<seed>).")
@click.option("--nodes", "n_nodes", default=1, show_default=True, type=click.IntRange(1, 16),
              help="A local cluster of this many Ray nodes, each region on its own node's resource "
                   "(regions dealt round-robin, head first; control on the head).")
@click.option("--replicas", type=click.IntRange(1, 8), default=None,
              help="Ingress replicas per region (default: regions.yaml's).")
def up(config_path, detach, burst, burst_requests, burst_rate, num_cpus, timeout, catalog=None, n_nodes=1,
       replicas=None):
    """Start (or join) Ray and Redis, deploy every region, and show it working."""
    if local.State.load() is not None:
        raise click.ClickException(f"the fleet is already up (see {local.STATE_FILE}): run `fleet down` first")
    if n_nodes > 1 and os.environ.get("RAY_ADDRESS"):
        raise click.ClickException("--nodes starts a local cluster: unset RAY_ADDRESS, or add nodes to yours")
    cfg = _serve_config(config_path)
    layout = nodes.plan([a["args"]["region"] for a in cfg["applications"] if _is_region(a)], n_nodes)
    if catalog or n_nodes > 1 or replicas:
        # The same applications, changed: deployed from a generated copy of the file.
        cfg = generated_config(cfg, catalog, n_nodes, replicas)
        local.STATE_DIR.mkdir(parents=True, exist_ok=True)
        generated = local.STATE_DIR / "serve_config.generated.yaml"
        generated.write_text(yaml.safe_dump(cfg, sort_keys=False))
        config_path = str(generated)
    state = local.State(http=_http_base(cfg), apps=[a["name"] for a in cfg["applications"]])
    try:
        if os.environ.get("REDIS_URL"):
            state.redis_url = os.environ["REDIS_URL"]
            click.echo(f"redis: using REDIS_URL {state.redis_url}")
        else:
            state.redis_url, state.redis_pid, _ = local.start_redis(local.STATE_DIR / "redis")
            click.echo(f"redis: started {state.redis_url} (pid {state.redis_pid})")
        state.save()
        _export_fleet_env(state)
        if os.environ.get("RAY_ADDRESS"):
            state.ray_address = os.environ["RAY_ADDRESS"]
            click.echo(f"ray: joining RAY_ADDRESS {state.ray_address}")
        else:
            click.echo("ray: starting a local head (HAProxy ingress, throughput-optimised Serve)")
            local.start_ray(num_cpus=num_cpus,
                            resources=placement.node_capacity(layout[0].regions) if n_nodes > 1 else None)
            state.ray_started, state.ray_address = True, "auto"
            if n_nodes > 1:
                state.gcs_address = "127.0.0.1:6379"
                state.nodes = nodes.to_state(layout)
                state.save()
                for node in layout[1:]:
                    nodes.start_worker(node, state.gcs_address, local.venv_bin("ray"),
                                       {**os.environ, **local.ray_env()}, num_cpus)
                    state.nodes = nodes.to_state(layout)
                    state.save()
                for node in layout:
                    click.echo(f"ray: node {node.name:<9} regions {', '.join(node.regions) or '-'}")
        state.save()
        dashboard = os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265")
        click.echo(f"serve: deploying {config_path}")
        deploy(config_path, dashboard)
        regions = _regions_of(cfg)
        control = _control_of(cfg)
        if not wait_ready(state.http, list(regions.values()) + ([control] if control else []), timeout):
            raise click.ClickException("regions did not become ready in time (see `serve status`)")
    except BaseException:
        _down(state)
        raise
    click.echo("\nregional endpoints:")
    for name, prefix in regions.items():
        click.echo(f"  {name:<14} POST {state.http}{prefix}/openrtb2/bid")
    click.echo(f"  notices        GET  {state.http}/<region>/notice/{{win|bill|loss|click}}?...")
    if control:
        click.echo(f"  control        {state.http}{control}/v1/...  (Authorization: Bearer <.fleet/control_token>)")
    if burst:
        from fleet.sim.burst import format_table, run_burst

        click.echo(f"\nburst: {burst_requests} requests per region at {burst_rate:.0f}/s ...")
        tallies = asyncio.run(run_burst(state.http, regions, burst_requests, burst_rate))
        click.echo(format_table(tallies))
    if detach:
        click.echo("\nfleet is up (detached); `fleet down` stops it")
        return
    click.echo("\nfleet is up; Ctrl-C stops it")
    stop = {"now": False}

    def _stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop["now"]:
        time.sleep(0.5)
    click.echo("\nstopping ...")
    _down(state)


def _export_fleet_env(state: local.State) -> None:
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


def _down(state: local.State) -> None:
    if state.ray_started:
        local.stop_ray()
    elif state.ray_address and state.apps:
        # A cluster we joined: remove our applications, leave the rest alone.
        try:
            import ray
            from ray import serve

            ray.init(address=state.ray_address, ignore_reinit_error=True, log_to_driver=False)
            for app in state.apps:
                serve.delete(app)
            ray.shutdown()
        except Exception as exc:  # keep going: Redis must still be stopped
            click.echo(f"could not delete applications: {exc}", err=True)
    if state.redis_pid:
        local.stop_pid(state.redis_pid)
    local.State.clear()


@main.command()
def down():
    """Stop what `fleet up` started (and nothing else)."""
    state = local.State.load()
    if state is None:
        click.echo("nothing to stop")
        return
    _down(state)
    click.echo("fleet stopped")


@main.command()
def status():
    """Readiness and per-replica counters of every region."""
    state = local.State.load()
    base = state.http if state else "http://127.0.0.1:8000"
    regions = load_regions().regions
    with httpx.Client(timeout=2.0) as client:
        for name, spec in regions.items():
            try:
                ready = client.get(f"{base}{spec.route_prefix}/ready").status_code == 200
                stats = client.get(f"{base}{spec.route_prefix}/stats").json() if ready else {}
            except httpx.HTTPError:
                ready, stats = False, {}
            click.echo(f"{name:<14} {'ready' if ready else 'DOWN':<6} {stats.get('bidder', {})}")


@main.group()
def node() -> None:
    """The nodes of a local cluster started with `fleet up --nodes N`."""


def _nodes_state() -> tuple[local.State, list[nodes.NodeRecord]]:
    state = local.State.load()
    if state is None or not state.nodes:
        raise click.ClickException("no local cluster of several nodes is up (`fleet up --nodes N`)")
    return state, nodes.from_state(state.nodes)


def placement_by_node(state: local.State, layout: list[nodes.NodeRecord]) -> dict[str, dict]:
    """Each node of the layout with its live Ray node and the fleet's actors running there
    (Serve replicas, cache shards, ledger consumers, control), read from the cluster itself."""
    os.environ.update(local.ray_env())
    import ray
    from ray.util.state import list_actors

    ray.init(address=state.gcs_address, log_to_driver=False, logging_level="ERROR", ignore_reinit_error=True)
    try:
        by_port = {n.node_manager_port: n.name for n in layout if not n.head}
        name_of: dict[str, str] = {}
        for n in ray.nodes():
            if not n["Alive"]:
                continue
            if placement.HEAD_RESOURCE in n["Resources"]:
                name_of[n["NodeID"]] = "head"
            elif n["NodeManagerPort"] in by_port:
                name_of[n["NodeID"]] = by_port[n["NodeManagerPort"]]
        out = {n.name: {"regions": n.regions, "alive": n.name in name_of.values(), "actors": []} for n in layout}
        for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000, detail=True, raise_on_missing_output=False):
            where = name_of.get(a.node_id)
            if where is not None and a.name:
                out[where]["actors"].append(a.name)
        for v in out.values():
            v["actors"].sort()
        return out
    finally:
        ray.shutdown()


@node.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, with every actor's node.")
def node_list(as_json):
    """Each node: its regions, whether it is up, and the fleet's processes placed on it."""
    state, layout = _nodes_state()
    where = placement_by_node(state, layout)
    if as_json:
        click.echo(json.dumps(where, indent=2))
        return
    for name, info in where.items():
        click.echo(f"{name:<9} {'up' if info['alive'] else 'DOWN':<5} regions {', '.join(info['regions']) or '-'}")
        for actor in info["actors"]:
            click.echo(f"    {actor}")


@node.command("kill")
@click.argument("name")
def node_kill(name):
    """Lose a worker node at once (SIGKILL its raylet and everything under it): a machine failure."""
    state, layout = _nodes_state()
    target = next((n for n in layout if n.name == name), None)
    if target is None:
        raise click.ClickException(f"no node {name!r}: {', '.join(n.name for n in layout)}")
    try:
        killed = nodes.kill(target)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    state.nodes = nodes.to_state(layout)
    state.save()
    click.echo(f"{name}: {killed} processes killed; regions {', '.join(target.regions)} lost until `fleet node start {name}`")


@node.command("start")
@click.argument("name")
def node_start(name):
    """Start a worker node again (same name and regions); the region's processes come back to it."""
    state, layout = _nodes_state()
    target = next((n for n in layout if n.name == name and not n.head), None)
    if target is None:
        raise click.ClickException(f"no worker node {name!r}")
    if nodes.alive(target):
        raise click.ClickException(f"{name} is running")
    _export_fleet_env(state)
    nodes.start_worker(target, state.gcs_address, local.venv_bin("ray"), {**os.environ, **local.ray_env()})
    state.nodes = nodes.to_state(layout)
    state.save()
    click.echo(f"{name}: up (raylet pid {target.pids[0]}), regions {', '.join(target.regions)}")


@main.group()
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

    cfg = _serve_config("serve_config.yaml")
    state = local.State.load()
    base = base or (state.http if state else _http_base(cfg))
    tallies = asyncio.run(run_burst(base, _regions_of(cfg), n, rate, seed))
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
def sim_run(duration, rate, seed, drop_rate, dup_rate, late_rate, cross_region, label, base, bring_up):
    """Simulated exchanges against the fleet, then the economic scorecard (bench/results/)."""
    from fleet.sim.exchange import SimConfig
    from fleet.sim.run import run_sim

    ctx = click.get_current_context()
    if bring_up and local.State.load() is None:
        ctx.invoke(up, detach=True, burst=False)
    try:
        state = local.State.load()
        base = base or (state.http if state else _http_base(_serve_config("serve_config.yaml")))
        cfg = SimConfig(base_url=base, duration_s=duration, rate=rate, seed=seed, drop_rate=drop_rate,
                        dup_rate=dup_rate, late_rate=late_rate, cross_region_share=cross_region)
        doc = run_sim(cfg, REPO_ROOT / "bench" / "results", label=label, progress=click.echo)
    finally:
        if bring_up:
            ctx.invoke(down)
    card = doc["scorecard"]
    click.echo(f"\ntraffic: {doc['traffic']}")
    click.echo(f"notices delivered: {doc['notices']['delivered']}")
    for who in ("fleet", "oracle"):
        s = card[who]
        click.echo(f"{who:<7} wins {s['wins']:6d}  spend ${s['spend_usd']:9.2f}  value ${s['value_usd']:9.2f}  "
                   f"value/$ {s['value_per_dollar']:.3f}  clicks/$ {s['clicks_per_dollar']:.3f}  "
                   f"surplus ${s['surplus_usd']:9.2f}  win rate {s['win_rate']:.3f}")
    click.echo(f"fleet / oracle: {card['fleet_vs_oracle']}")
    for k, b in card["by_latency"].items():
        click.echo(f"  {k:>10}: {b}")
    click.echo(f"results: bench/results/sim-{label}.json and .png plots")


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
        ctx.invoke(up, detach=True, burst=False, catalog=catalog)
    try:
        state = local.State.load()
        base = state.http if state else _http_base(_serve_config("serve_config.yaml"))
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


@main.group()
def model():
    """The bid-price model: train, list."""


@model.command("train")
@click.option("--name", default="ctr", show_default=True)
@click.option("--version", "version", required=True)
@click.option("--rows", default=300_000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--rounds", default=300, show_default=True)
@click.option("--market-seed", default=7, show_default=True, help="The market (the sim's --seed).")
def model_train(name, version, rows, seed, rounds, market_seed):
    """Train on the market, evaluate, export three formats, write models/NAME/VERSION/."""
    from fleet.ml.train import train

    train(name, version, rows, seed, rounds, market_seed, log=click.echo)


@model.command("list")
def model_list():
    """Model versions under models/ with their headline metrics."""
    import json

    for manifest in sorted((REPO_ROOT / "models").glob("*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        click.echo(f"{m['name']}/{m['version']:<6} trees {m['metrics']['trees']:4d}  "
                   f"AUC {m['metrics']['test_auc']:.4f} (truth {m['metrics']['test_auc_of_truth']:.4f})  "
                   f"logloss {m['metrics']['test_logloss']:.5f}  created {m['created']}")


@main.group()
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


from fleet.bench.cli import bench  # noqa: E402  (registers `fleet bench ...`)

main.add_command(bench)

if __name__ == "__main__":
    main()
