"""``fleet bench ...``: benchmarks that write ``bench/results/*.json``."""

from __future__ import annotations

import os
from pathlib import Path
import time

import click

from fleet.cli.common import http_base, serve_config, wait_ready
from fleet.cli.up import down, up
from fleet.config import REPO_ROOT, load_regions

RESULTS = REPO_ROOT / "bench" / "results"


@click.group()
def bench() -> None:
    """Benchmarks (results in bench/results/, summary in docs/benchmarks.md)."""


@bench.command("loop-lag")
@click.option("--seconds", default=4.0, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def bench_loop_lag(seconds: float, rounds: int) -> None:
    """What the event-loop lag monitor costs the process it watches (bench/results/loop-lag.json)."""
    from fleet.bench.looplag import run_looplag

    run_looplag(RESULTS / "loop-lag.json", seconds, rounds, log=click.echo)


@bench.command("gc")
@click.option("--requests", default=20_000, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def bench_gc(requests: int, rounds: int) -> None:
    """A full garbage collection in a serving process, start-up heap frozen against not
    (bench/results/gc.json)."""
    from fleet.bench.gcpause import run_gc_bench

    run_gc_bench(RESULTS / "gc.json", requests, rounds, log=click.echo)


@bench.command("lookups")
@click.option("--rate", default=600.0, show_default=True, help="Requests a second on the one loop.")
@click.option("--cpu-us", default=600.0, show_default=True, help="CPU per request around its lookup.")
@click.option("--seconds", default=4.0, show_default=True)
@click.option("--rounds", default=4, show_default=True)
def bench_lookups(rate: float, cpu_us: float, seconds: float, rounds: int) -> None:
    """A cache lookup's round trip from a busy loop: callbacks against a task per batch
    (bench/results/lookups.json)."""
    from fleet.bench.lookups import run_lookup_bench

    run_lookup_bench(RESULTS / "lookups.json", rate, seconds, rounds, cpu_us, log=click.echo)


@bench.command("batcher")
@click.option("--lookups", default=20_000, show_default=True, help="Lookups per round and variant.")
@click.option("--rounds", default=7, show_default=True)
def bench_batcher(lookups: int, rounds: int) -> None:
    """What timing each lookup's answer (enrichment_answer) costs the per-shard micro-batcher
    (bench/results/batcher-observe.json)."""
    from fleet.bench.batcher import run_batcher_bench

    run_batcher_bench(RESULTS / "batcher-observe.json", lookups, rounds, log=click.echo)


@bench.command("pacing")
@click.option("--requests", default=3_000, show_default=True)
@click.option("--rounds", default=6, show_default=True)
def bench_pacing(requests, rounds):
    """The bid path under control's leases against the local allowance, interleaved, same run."""
    from fleet.bench.pacing import run_pacing_bench

    run_pacing_bench(requests, rounds, RESULTS / "pacing-stage.json")


@bench.command("targeting")
@click.option("--campaigns", default=10_000, show_default=True)
@click.option("--requests", default=5_000, show_default=True)
def bench_targeting(campaigns, requests):
    """Targeting stage over a synthetic catalog, against a linear scan in the same run."""
    from fleet.bench.targeting import run_targeting

    run_targeting(campaigns, requests, RESULTS / f"targeting-{campaigns}.json")


@bench.command("ingress")
@click.option("--seconds", default=8.0, show_default=True)
@click.option("--connections", default=8, show_default=True)
def bench_ingress(seconds, connections):
    """Noop app through Serve's Python proxy vs HAProxy ingress (one Ray at a time)."""
    from fleet.bench.ingress import run_ingress

    run_ingress(RESULTS / "ingress.json", seconds, connections, log=click.echo)


@bench.command("inference")
@click.option("--model", default="ctr/v1", show_default=True)
@click.option("--seconds", default=1.5, show_default=True, help="Per backend and batch size.")
@click.option("--threads", default=1, show_default=True)
def bench_inference(model, seconds, threads):
    """Rows/s and p99 per batch for every backend this machine has (GPU ones where present).

    On a GPU machine without this venv: `python -m fleet.bench.inference run ...` with the .npz
    this command writes (see docs/benchmarks.md).
    """
    from fleet.bench.inference import prepare, run
    from fleet.ml.scorer import model_dir

    npz = prepare(model, RESULTS / f"inference-{model.replace('/', '-')}.npz")
    try:
        run(npz, model_dir(model), RESULTS / f"inference-local-t{threads}.json", seconds, threads,
            log=click.echo)
    finally:
        npz.unlink(missing_ok=True)


@bench.command("batching")
@click.option("--model", default="ctr/v1", show_default=True)
@click.option("--seconds", default=4.0, show_default=True)
@click.option("--port", default=8125, show_default=True)
@click.option("--backend", default="onnx-cpu", show_default=True,
              help="Deployment and bare session backend (auto | onnx-cpu | onnx-cuda | xgboost-*).")
@click.option("--num-gpus", default=0.0, show_default=True, type=float,
              help="The replica's GPU fraction, as a GPU region's inference deployment has (e.g. 0.25).")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Result file (default bench/results/batching.json).")
def bench_batching(model: str, seconds: float, port: int, backend: str, num_gpus: float,
                   out: Path | None) -> None:
    """Served, batched inference vs a bare session of the same backend at the same rows per call.

    The defaults measure the CPU serving path; on a GPU machine `--backend onnx-cuda --num-gpus
    0.25` measures a GPU region's deployment against a bare ORT CUDA session.
    """
    from fleet.bench.batching import run_batching

    run_batching(model, out or RESULTS / "batching.json", port, seconds, log=click.echo,
                 backend=backend, num_gpus=num_gpus)


@bench.command("ledger")
@click.option("--region", default="us-east", show_default=True)
@click.option("--requests", default=20_000, show_default=True)
def bench_ledger(region, requests):
    """Emission's CPU per event and the consumer's rate, against the region's measured capacity."""
    import json
    import tempfile

    from fleet.bench.ledger import run
    from fleet.runtime import local

    cap_file = RESULTS / f"capacity-{region}-cache.json"
    capacity = None
    if cap_file.exists():
        capacity = json.loads(cap_file.read_text())["results"][region]["capacity_rps"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    url, _, proc = local.start_redis(tmp / "redis")
    try:
        doc = run(url, region, requests, capacity, tmp)
    finally:
        proc.terminate()
    doc["capacity_from"] = cap_file.name if capacity else None
    doc["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ledger-{region}.json").write_text(json.dumps(doc, indent=2))
    click.echo(json.dumps(doc, indent=2))


@bench.command("notice-ack")
@click.option("--notices", "n", default=20_000, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def bench_notice_ack(n, rounds):
    """What answering a notice only once its event is durable costs, against answering at once
    (bench/results/notice-ack.json)."""
    import json
    import tempfile

    from fleet.bench.notice_ack import run
    from fleet.runtime import local

    tmp = Path(tempfile.mkdtemp(prefix="bench-ack-"))
    url, _, proc = local.start_redis(tmp / "redis")
    try:
        doc = run(url, tmp, n, rounds=rounds)
    finally:
        proc.terminate()
    doc["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "notice-ack.json").write_text(json.dumps(doc, indent=2))
    for c, v in doc["results"].items():
        for k in ("emit", "emit_durable"):
            click.echo(f"{c:<16}{k:<14}" + "  ".join(f"{x['cpu_us_per_notice']:7.2f} us  p99 {x['answer_p99_ms']:7.3f} ms"
                                                  for x in v[k]))
        click.echo(f"{c:<16}cpu durable/emit: {v['cpu_ratio_durable_to_emit']}")


@bench.command("notices")
@click.option("--duration", default=120.0, show_default=True, help="Seconds of auctions.")
@click.option("--rate", default=60.0, show_default=True, help="Mean auctions/s over all regions.")
@click.option("--compress", default=10.0, show_default=True, help="Late bills (1-15 min) divided by this.")
@click.option("--campaigns", "n", default=20, show_default=True, help="Campaigns (synth:pacing:<n>:11).")
@click.option("--kill/--no-kill", default=True, show_default=True, help="SIGKILL one ingress replica mid-run.")
@click.option("--label", default="notices", show_default=True)
@click.option("--up", "bring_up", is_flag=True, help="Bring the fleet up (two replicas per region) and down after.")
def bench_notices(duration, rate, compress, n, kill, label, bring_up):
    """Money under a misbehaving exchange: ledger, pacing and budgets against the simulator's
    own billed truth (bench/results/<label>.json)."""
    import asyncio
    import json

    from fleet.bench.notices import run_notices
    from fleet.campaigns.catalog import load_catalog
    from fleet.control.auth import load_token
    from fleet.runtime import local

    catalog = f"synth:pacing:{n}:11"
    ctx = click.get_current_context()
    if bring_up and local.State.load() is None:
        ctx.invoke(up, detach=True, burst=False, catalog=catalog, replicas=2, fresh=True)
    try:
        state = local.State.load()
        base = state.http if state else http_base(serve_config("serve_config.yaml"))
        redis_url = os.environ.get("REDIS_URL") or (state.redis_url if state else None)
        doc = asyncio.run(run_notices(base, f"{base}/control", load_token(), load_regions(), load_catalog(catalog),
                                      redis_url, duration_s=duration, rate=rate, compress=compress, kill=kill,
                                      progress=click.echo))
    finally:
        if bring_up:
            ctx.invoke(down)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{label}.json").write_text(json.dumps(doc, indent=2))
    click.echo(json.dumps(doc, indent=2))


PARTS = ("cache", "near_cache", "telemetry")  # what a capacity comparison can turn off


def _without(part: str) -> str:
    """Route and app suffix of the region without ``part``: -nocache, -nonear-cache, ..."""
    return "-no" + part.replace("_", "-")


@bench.command("capacity")
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
def bench_capacity(region, slo_ms, step_s, connections, start_rate, port, model, compare_cache,
                   compare_telemetry=False, rounds=1):
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
    redis_proc = None
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
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(region_app.build_app(RegionAppArgs(region=region, model=model)), name=f"bench-{region}",
                  route_prefix=spec.route_prefix, blocking=False)
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
        targets[region] = (spec.route_prefix, spec.route_prefix)
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(base, prefixes, 180):
            raise click.ClickException("region did not become ready")
        time.sleep(2)
        suffix = (("-" + model.replace("/", "-") if model else "") + ("-cache" if compare_cache else "")
                  + ("-telemetry" if compare_telemetry else ""))
        apps = {"noop": "bench-noop", region: f"bench-{region}",
                **{f"{region} without {part.replace('_', '-')}": f"bench-{region}{_without(part)}" for part in PARTS}}
        doc = run_capacity(
            base, targets, region, slo_ms=slo_ms, step_s=step_s, connections=connections, start_rate=start_rate,
            out=RESULTS / f"capacity-{region}{suffix}.json",
            log=click.echo, meta={"pricing": f"model:{model}" if model else "rule"}, rounds=rounds, apps=apps,
        )
        for label, phases in doc["cpu_per_request"].items():
            click.echo(f"CPU per request, {label}: " + "; ".join(
                f"{ph} ingress {v['ingress_us']:.0f} us, all {v['total_us']:.0f} us" for ph, v in phases.items()))
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
            local.stop_haproxy()  # a lingering one holds its ports against the next run
        if redis_proc is not None:
            redis_proc.terminate()


@bench.command("cost")
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


@bench.command("faults")
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
                   replicas=sc.replicas, fresh=True)
    try:
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
