"""Benches that bring up a fleet (or Ray) of their own: capacity, cost, faults.

Registered on ``fleet bench`` by ``fleet.cli.bench``; kept apart so each module stays small.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from fleet.cli.common import serve_config, wait_ready
from fleet.cli.up import down, up
from fleet.config import REPO_ROOT, load_regions

RESULTS = REPO_ROOT / "bench" / "results"
PARTS = ("cache", "near_cache", "telemetry", "partners")  # what a capacity comparison can turn off

def _without(part: str) -> str:
    """Route and app suffix of the region without ``part``: -nocache, -nonear-cache, ..."""
    return "-no" + part.replace("_", "-")


def _start_partners(which: str, region: str):
    """The simulated partners in a process of their own, and a copy of ``regions.yaml`` with
    ``region`` calling them: (process, that file's path, what the result records of them)."""
    import json
    import tempfile

    import yaml

    from fleet.bench.partners import start_partners
    from fleet.config import PartnerSettings

    proc, entries = start_partners(which)
    raw = yaml.safe_load((REPO_ROOT / "regions.yaml").read_text())
    raw["regions"][region]["partners"] = entries
    path = Path(tempfile.mkdtemp(prefix="bench-partners-")) / "regions.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    classes = PartnerSettings.model_validate((raw.get("defaults") or {}).get("partners") or {}).cutoff_classes
    longest = max(c for e in entries for c in classes[e.get("cutoff_class", "standard")].values())
    return proc, str(path), {"partners": which, "partner_ids": [e["id"] for e in entries],
                             "partners_longest_cutoff_ms": longest, "partner_entries": json.loads(json.dumps(entries))}


@click.command("capacity")
@click.option("--region", default="us-east", show_default=True)
@click.option("--slo-ms", default=15.0, show_default=True, help="p99 limit for a passing step.")
@click.option("--step-s", default=5.0, show_default=True)
@click.option("--connections", default=32, show_default=True)
@click.option("--start-rate", default=300.0, show_default=True)
@click.option("--port", default=8123, show_default=True, help="Ingress port of the bench's own Ray.")
@click.option("--model", default=None, help="Price with this model version (e.g. ctr/v1); default rule.")
@click.option("--compare-cache/--no-compare-cache", default=False, show_default=True,
              help="Also measure the region without its cache shards (enrichment from the request only) "
                   "and with them but without the ingress's near-cache (every lookup waits for its shard).")
@click.option("--compare-telemetry/--no-compare-telemetry", default=False, show_default=True,
              help="Also measure the region without tracing and metrics (telemetry off).")
@click.option("--rounds", default=1, show_default=True,
              help="Measure every app this many times, comparison order alternating; report medians.")
@click.option("--partners", "partner_set", type=click.Choice(["none", "fast4", "sim"]), default="none",
              show_default=True,
              help="The region calls these simulated demand partners (fleet.sim.partners, in a process of "
                   "their own whose CPU is counted apart), and is also measured without them. Its p99 limit "
                   "is --slo-ms plus the partners' longest cutoff plus 2 ms (the wait they may add).")
def bench_capacity(region, slo_ms, step_s, connections, start_rate, port, model, compare_cache,
                   compare_telemetry=False, rounds=1, partner_set="none"):
    """One region's capacity against a no-op Serve app, same ingress, same wrk, same run.

    Starts its own local Ray (HAProxy ingress, throughput settings) with the region (its cache
    shards writing through to REDIS_URL, or to a redis-server started for the run) and the noop
    app on one replica each, unless RAY_ADDRESS is set, and stops what it started.
    """
    from fleet.runtime import local

    if not os.environ.get("RAY_ADDRESS"):
        os.environ.update(local.ray_env())  # before Ray is imported: it reads these then
    import ray
    from ray import serve

    from fleet.bench.capacity import run_capacity
    from fleet.config import RegionAppArgs
    from fleet.serve import noop_app, region_app

    spec = load_regions().regions[region]
    started = False
    redis_proc = partners_proc = None
    if not os.environ.get("REDIS_URL"):
        import tempfile

        os.environ["REDIS_URL"], _, redis_proc = local.start_redis(Path(tempfile.mkdtemp(prefix="bench-redis-")))
    if not os.environ.get("RAY_ADDRESS"):
        ray.init(include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"REDIS_URL": os.environ["REDIS_URL"]}})
        started = True
    else:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        slo_by_target, regions_file, meta = {}, "regions.yaml", {}
        if partner_set != "none":
            partners_proc, regions_file, meta = _start_partners(partner_set, region)
            slo_by_target[region] = slo_ms + meta["partners_longest_cutoff_ms"] + 2.0
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(region_app.build_app(RegionAppArgs(region=region, model=model, regions_file=regions_file)),
                  name=f"bench-{region}", route_prefix=spec.route_prefix, blocking=False)
        serve.run(noop_app.build_app({"max_ongoing_requests": spec.max_ongoing_requests}),
                  name="bench-noop", route_prefix="/bench-noop", blocking=False)
        targets = {"noop": ("/bench-noop", None)}
        prefixes = [spec.route_prefix]
        # The region without one part, measured the same way in the same run (the comparison).
        for wanted, part in ((compare_cache, "cache"), (compare_cache, "near_cache"), (compare_telemetry, "telemetry")):
            if not wanted:
                continue
            prefix = f"{spec.route_prefix}{_without(part)}"
            serve.run(region_app.build_app(RegionAppArgs(region=region, model=model, **{part: False})),
                      name=f"bench-{region}{_without(part)}", route_prefix=prefix, blocking=False)
            targets[f"{region} without {part.replace('_', '-')}"] = (prefix, prefix)
            prefixes.append(prefix)
        if partner_set != "none":  # the region as configured, no partners: the same run's comparison
            prefix = f"{spec.route_prefix}{_without('partners')}"
            serve.run(region_app.build_app(RegionAppArgs(region=region, model=model)),
                      name=f"bench-{region}{_without('partners')}", route_prefix=prefix, blocking=False)
            targets[f"{region} without partners"] = (prefix, prefix)
            prefixes.append(prefix)
        targets[region] = (spec.route_prefix, spec.route_prefix)
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(base, prefixes, 180):
            raise click.ClickException("region did not become ready")
        time.sleep(2)
        suffix = (("-" + model.replace("/", "-") if model else "") + ("-cache" if compare_cache else "")
                  + ("-telemetry" if compare_telemetry else "")
                  + (f"-partners-{partner_set}" if partner_set != "none" else ""))
        apps = {"noop": "bench-noop", region: f"bench-{region}",
                **{f"{region} without {part.replace('_', '-')}": f"bench-{region}{_without(part)}" for part in PARTS}}
        doc = run_capacity(
            base, targets, region, slo_ms=slo_ms, step_s=step_s, connections=connections, start_rate=start_rate,
            out=RESULTS / f"capacity-{region}{suffix}.json",
            log=click.echo, meta={"pricing": f"model:{model}" if model else "rule", **meta}, rounds=rounds,
            apps=apps, slo_by_target=slo_by_target,
        )
        for label, phases in doc["cpu_per_request"].items():
            click.echo(f"CPU per request, {label}: " + "; ".join(
                f"{ph} ingress {v['ingress_us']:.0f} us, all {v['total_us']:.0f} us"
                + (f", partners apart {v['partners_us']:.0f} us" if "partners_us" in v else "")
                for ph, v in phases.items()))
        if partner_set != "none":
            r = doc["results"]
            without = r[f"{region} without partners"]["capacity_rps"]
            click.echo(f"capacity with partners / noop: {doc['ratio_capacity']}; without partners / noop: "
                       f"{doc['ratios_capacity'][f'{region} without partners']}; with / without: "
                       f"{r[region]['capacity_rps'] / without if without else float('nan'):.3f}")
        if compare_cache:
            r = doc["results"]
            without = r[f"{region} without cache"]["capacity_rps"]
            ratio = r[region]["capacity_rps"] / without if without else float("nan")
            click.echo(f"capacity with cache / without: {ratio:.3f}; enrichment p99 at half load: "
                       f"{r[region]['half_load_stages'].get('enrichment', {}).get('p99_ms')} ms (the shard's "
                       f"answer in: {r[region]['half_load_stages'].get('enrichment_answer', {}).get('p99_ms')} ms; "
                       f"near-cache answered {r[region].get('half_load_lookups', {}).get('near_hit_rate')})")
            shards_only = r[f"{region} without near-cache"]
            ratio = shards_only["capacity_rps"] / without if without else float("nan")
            click.echo(f"without the near-cache: capacity / without cache {ratio:.3f}; enrichment p99 at half "
                       f"load: {shards_only['half_load_stages'].get('enrichment', {}).get('p99_ms')} ms")
            for i, rr in enumerate(doc.get("ratios_per_round", [])):
                c, n = rr.get(region), rr.get(f"{region} without cache")
                click.echo(f"  round {i + 1}: with cache / without {c / n:.3f}" if c and n else f"  round {i + 1}: -")
        if compare_telemetry:
            r = doc["results"]
            ratio = r[region]["capacity_rps"] / r[f"{region} without telemetry"]["capacity_rps"]
            sat = r[region]["saturation_rps"] / r[f"{region} without telemetry"]["saturation_rps"]
            click.echo(f"capacity with telemetry / without: {ratio:.3f}; saturation: {sat:.3f}")
    finally:
        for app in (f"bench-{region}", "bench-noop", *(f"bench-{region}{_without(part)}" for part in PARTS)):
            try:
                serve.delete(app)
            except Exception:
                pass
        if started:
            serve.shutdown()
            ray.shutdown()
        if partners_proc is not None:
            partners_proc.terminate()
            partners_proc.wait(10)
            local.stop_haproxy()  # a lingering one holds its ports against the next run
        if redis_proc is not None:
            redis_proc.terminate()


@click.command("cost")
@click.option("--scope", type=click.Choice(["fleet", "region", "both"]), default="both", show_default=True,
              help="fleet: every region and control as `fleet up` starts them; region: one region alone.")
@click.option("--region", default="us-east", show_default=True, help="The region driven.")
@click.option("--seconds", default=8.0, show_default=True, help="Per step.")
@click.option("--rounds", default=2, show_default=True, help="Rounds per scope, target order alternating.")
@click.option("--connections", default=8, show_default=True)
@click.option("--port", default=8123, show_default=True, help="Ingress port of the region scope's own Ray.")
@click.option("--label", default="", help="Result file suffix: bench/results/cost[-label].json.")
def bench_cost(scope, region, seconds, rounds, connections, port, label):
    """CPU per request by process and by ingress stage, at saturation and half load, against the
    no-op app in the same run; prints the saturation ratios (bench/results/cost*.json)."""
    from fleet.bench import cost

    ctx = click.get_current_context()
    cfg = load_regions().regions
    kw = dict(seconds=seconds, connections=connections, rounds=rounds, log=click.echo)
    results = {}
    out = RESULTS / f"cost{'-' + label if label else ''}.json"

    def save():  # after each scope: a failure in the next keeps what was measured
        doc = cost.document(results, seconds=seconds, connections=connections, rounds=rounds, label=label)
        cost.write(doc, out)
        return doc

    if scope in ("fleet", "both"):
        from fleet.cli.common import regions_of, serve_config

        regions = list(regions_of(serve_config("serve_config.yaml")))
        with cost.fleet_scope(ctx, up, down, region) as (base, redis_pid):
            results["fleet"] = cost.run_scope("fleet", base, redis_pid, region, regions,
                                              {r: cfg[r].cache_shards for r in regions}, **kw)
        save()
    if scope == "both":
        # the region scope in a process of its own: a second local Ray started from the process
        # that brought the whole fleet up and down lost its HAProxy manager at start
        import json
        import subprocess
        import sys

        sub = f"{label}-region" if label else "region"
        subprocess.run([sys.executable, "-m", "fleet.cli", "bench", "cost", "--scope", "region", "--region", region,
                        "--seconds", str(seconds), "--rounds", str(rounds), "--connections", str(connections),
                        "--port", str(port), "--label", sub], check=True)
        results["region"] = json.loads((RESULTS / f"cost-{sub}.json").read_text())["results"]["region"]
    elif scope == "region":
        with cost.region_scope(region, port) as (base, redis_pid):
            results["region"] = cost.run_scope("region", base, redis_pid, region, [region],
                                               {region: cfg[region].cache_shards}, **kw)
    doc = save()
    for line in cost.report_lines(doc):
        click.echo(line)


@click.command("faults")
@click.option("--scenario", default=None, help="One of the named scenarios (--list shows them).")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--rate", default=60.0, show_default=True, help="Baseline auctions/s over all regions.")
@click.option("--region", default="us-east", show_default=True, help="The region the fault hits.")
@click.option("--quick", is_flag=True, help="The short version CI runs (shorter baseline and fault).")
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True,
              help="Serve config `fleet up` deploys when no fleet is up.")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path), help="Results dir (bench/results).")
def bench_faults(scenario, list_only, rate, region, quick, config_path, out_dir):
    """One fault under steady exchange traffic against the same run's healthy baseline
    (bench/results/faults-<scenario>.json). Brings the fleet up (and down after) unless one is up."""
    import asyncio

    import yaml

    from fleet.bench import fault_ops, faults
    from fleet.campaigns.catalog import load_catalog
    from fleet.control.auth import load_token
    from fleet.runtime import local

    if list_only or scenario is None:
        for sc in faults.SCENARIOS.values():
            click.echo(f"{sc.name:<18} {sc.what}")
        return
    sc = faults.SCENARIOS.get(scenario)
    if sc is None:
        raise click.ClickException(f"unknown scenario {scenario!r}: one of {', '.join(faults.SCENARIOS)}")
    why = faults.skip_reason(sc)
    if why:
        click.echo(why)
        return
    ctx = click.get_current_context()
    bring_up = local.State.load() is None
    if bring_up:
        if sc.remote_pricing:  # the region prices through its inference deployment
            cfg = serve_config(config_path)
            for app in cfg["applications"]:
                if app["name"] == region:
                    app["args"]["pricing"] = "remote"
            local.STATE_DIR.mkdir(parents=True, exist_ok=True)
            config_path = str(local.STATE_DIR / "serve_config.faults-remote.yaml")
            Path(config_path).write_text(yaml.safe_dump(cfg, sort_keys=False))
        ctx.invoke(up, config_path=config_path, detach=True, burst=False, catalog=faults.CATALOG,
                   replicas=sc.replicas, fresh=True, partners="sim" if sc.partners else "none")
    try:
        if sc.partners and not fault_ops.sim_partner_endpoints():
            raise click.ClickException(f"{sc.name} needs the simulated partners (fleet up --partners sim): "
                                       f"`fleet down`, then run it again (it brings the fleet up)")
        if sc.replicas and len(fault_ops.process_pids(f"ServeReplica:{region}:ingress-{region}")) < sc.replicas:
            raise click.ClickException(f"{sc.name} needs {sc.replicas} ingress replicas in {region}: "
                                       f"`fleet down`, then run it again (it brings the fleet up)")
        if sc.remote_pricing and not fault_ops.process_pids(f"ServeReplica:{region}:inference-{region}"):
            raise click.ClickException(f"{sc.name} needs {region} pricing remotely: `fleet down`, then run it again")
        state = local.State.load()
        base = state.http
        timing = faults.QUICK if quick else faults.Timing()
        doc = asyncio.run(faults.run_fault(sc, base, f"{base}/control", load_token(), load_regions(),
                                           load_catalog(faults.CATALOG), state.redis_url, rate=rate, timing=timing,
                                           region=region, progress=click.echo, plot_dir=out_dir or RESULTS))
    finally:
        if bring_up:
            ctx.invoke(down)
    doc["box"] = {"cpus": os.cpu_count(), "fleet_brought_up": bring_up}
    path = faults.write(doc, (out_dir or RESULTS) / f"faults-{sc.name}{'-quick' if quick else ''}.json")
    for line in faults.summary_lines(doc):
        click.echo(line)
    click.echo(f"written {path}")
