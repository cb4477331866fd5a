"""``fleet up``, ``fleet down``, ``fleet status``.

``up`` uses REDIS_URL and RAY_ADDRESS when set and starts local ones otherwise (the embedded
default), deploys ``serve_config.yaml``, waits for every region, prints the endpoints, sends a
short burst of simulated exchange traffic, and stays in the foreground until interrupted
(``--detach`` returns instead). ``down`` stops only what ``up`` started.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time

import click
import httpx
import yaml

from fleet.cli.common import control_of, export_fleet_env, http_base, is_region, regions_of, serve_config, wait_ready
from fleet.config import REPO_ROOT, load_regions, resolve
from fleet.runtime import local, nodes, placement


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


def generated_config(cfg: dict, catalog: str | None, n_nodes: int, replicas: int | None = None,
                     regions_file: str | None = None) -> dict:
    """``serve_config.yaml`` as ``up`` deploys it: another catalog everywhere, another number of
    ingress replicas per region, and on several nodes every region pinned to its node's resource,
    control to the head, and Serve's ingress on the head only (the nodes share one host, so one
    ingress port)."""
    cfg = json.loads(json.dumps(cfg))
    for app in cfg["applications"]:
        args = app.setdefault("args", {})
        if catalog:
            args["catalog"] = catalog
        if regions_file and (is_region(app) or app["import_path"].startswith("fleet.serve.control_app")):
            args["regions_file"] = regions_file
        if replicas and is_region(app):
            for dep in app.setdefault("deployments", [{"name": f"ingress-{args['region']}"}]):
                if dep["name"].startswith("ingress-"):
                    dep["num_replicas"] = replicas
        if n_nodes > 1 and is_region(app):
            args["region_resource"] = True
        if n_nodes > 1 and app["import_path"].startswith("fleet.serve.control_app"):
            args["head"] = True
    if n_nodes > 1:
        cfg["proxy_location"] = "HeadOnly"
    return cfg


@click.command()
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True)
@click.option("--detach", is_flag=True, help="Return once every region is ready.")
@click.option("--burst/--no-burst", default=True, show_default=True,
              help="Send a short burst of simulated exchange traffic once ready.")
@click.option("--burst-requests", default=300, show_default=True, help="Requests per region.")
@click.option("--burst-rate", default=50.0, show_default=True,
              help="Requests/s per region (50: what this 2-core box serves within tmax right after start, "
                   "every region at once; docs/benchmarks.md, \"fleet up's burst\").")
@click.option("--num-cpus", type=int, default=None, help="CPUs for a local Ray head.")
@click.option("--timeout", default=240.0, show_default=True, help="Seconds to wait for readiness.")
@click.option("--catalog", default=None, help="Another campaign catalog for every region and control "
              "(a file, or synth:pacing:<n>:<seed>).")
@click.option("--nodes", "n_nodes", default=1, show_default=True, type=click.IntRange(1, 16),
              help="A local cluster of this many Ray nodes, each region on its own node's resource "
                   "(regions dealt round-robin, head first; control on the head).")
@click.option("--fresh", is_flag=True, help="Start the local Redis empty (control's state, the ledger, the "
              "cache): a benchmark's own flights, not leases and spend left by an earlier run.")
@click.option("--replicas", type=click.IntRange(1, 8), default=None,
              help="Ingress replicas per region (default: regions.yaml's).")
@click.option("--partners", "partners", type=click.Choice(["none", "sim"]), default="none", show_default=True,
              help="sim: start the eight simulated demand partners (fleet.sim.partners) and configure every "
                   "region to call them (stage 6).")
def up(config_path, detach, burst, burst_requests, burst_rate, num_cpus, timeout, catalog=None, n_nodes=1, fresh=False,
       replicas=None, partners="none"):
    """Start (or join) Ray and Redis, deploy every region, and show it working."""
    if local.State.load() is not None:
        raise click.ClickException(f"the fleet is already up (see {local.STATE_FILE}): run `fleet down` first")
    if n_nodes > 1 and os.environ.get("RAY_ADDRESS"):
        raise click.ClickException("--nodes starts a local cluster: unset RAY_ADDRESS, or add nodes to yours")
    cfg = serve_config(config_path)
    layout = nodes.plan([a["args"]["region"] for a in cfg["applications"] if is_region(a)], n_nodes)
    regions_file = start_sim_partners(cfg) if partners == "sim" else None
    if catalog or n_nodes > 1 or replicas or regions_file:
        # The same applications, changed: deployed from a generated copy of the file.
        cfg = generated_config(cfg, catalog, n_nodes, replicas, regions_file)
        local.STATE_DIR.mkdir(parents=True, exist_ok=True)
        generated = local.STATE_DIR / "serve_config.generated.yaml"
        generated.write_text(yaml.safe_dump(cfg, sort_keys=False))
        config_path = str(generated)
    state = local.State(http=http_base(cfg), apps=[a["name"] for a in cfg["applications"]])
    try:
        if os.environ.get("REDIS_URL"):
            state.redis_url = os.environ["REDIS_URL"]
            click.echo(f"redis: using REDIS_URL {state.redis_url}")
        else:
            if fresh:
                shutil.rmtree(local.STATE_DIR / "redis", ignore_errors=True)
            state.redis_url, state.redis_pid, _ = local.start_redis(local.STATE_DIR / "redis")
            click.echo(f"redis: started {state.redis_url} (pid {state.redis_pid})")
        state.save()
        export_fleet_env(state)
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
        regions = regions_of(cfg)
        control = control_of(cfg)
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
        click.echo(f"  dashboard      {dashboard_link(state.http, control)}")
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

PARTNERS_PID = local.STATE_DIR / "partners.pid"


def start_sim_partners(cfg: dict, port: int = 0, timeout_s: float = 20.0) -> str:
    """Start the simulated partners (one process, eight ports) and write a copy of the regions
    file with every region calling them; its path."""
    regions_path = next((a["args"].get("regions_file", "regions.yaml") for a in cfg["applications"]
                         if is_region(a)), "regions.yaml")
    local.STATE_DIR.mkdir(parents=True, exist_ok=True)
    out = local.STATE_DIR / "partners.json"
    out.unlink(missing_ok=True)
    log = open(local.STATE_DIR / "partners.log", "w")
    proc = subprocess.Popen([local.venv_bin("python"), "-m", "fleet.sim.partners", "--port", str(port),
                             "--write", str(out)], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    PARTNERS_PID.write_text(str(proc.pid))
    end = time.monotonic() + timeout_s
    while not out.exists() or not out.read_text().strip():
        if proc.poll() is not None or time.monotonic() > end:
            stop_sim_partners()
            raise click.ClickException(f"simulated partners did not start (see {local.STATE_DIR / 'partners.log'})")
        time.sleep(0.2)
    entries = json.loads(out.read_text())
    raw = yaml.safe_load(resolve(regions_path).read_text())
    for spec in raw["regions"].values():
        spec["partners"] = entries
    path = local.STATE_DIR / "regions.partners.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    click.echo(f"partners: {len(entries)} simulated partners (pid {proc.pid}): "
               + ", ".join(f"{e['id']} {e['endpoint'].rsplit(':', 1)[1].split('/')[0]}" for e in entries)
               + f"; every region calls them ({path})")
    return str(path)


def stop_sim_partners() -> None:
    if PARTNERS_PID.exists():
        try:
            local.stop_pid(int(PARTNERS_PID.read_text()))
        except Exception as exc:
            click.echo(f"could not stop the simulated partners: {exc}", err=True)
        PARTNERS_PID.unlink(missing_ok=True)


def dashboard_link(base: str, control: str) -> str:
    """The control dashboard with its bearer token in the fragment (read by the page, never sent
    to the server in the URL)."""
    from fleet.control.auth import load_token

    return f"{base}{control}/#token={load_token()}"


def _down(state: local.State) -> None:
    stop_sim_partners()
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


@click.command()
def down():
    """Stop what `fleet up` started (and nothing else)."""
    state = local.State.load()
    if state is None:
        click.echo("nothing to stop")
        return
    _down(state)
    click.echo("fleet stopped")


@click.command()
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
