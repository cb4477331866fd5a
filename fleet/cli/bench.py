"""``fleet bench ...``: benchmarks that write ``bench/results/*.json``."""

from __future__ import annotations

import os
from pathlib import Path
import time

import click

from fleet.cli.common import http_base, serve_config
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


@bench.command("pricing-together")
@click.option("--requests", default=3000, show_default=True)
@click.option("--rounds", default=5, show_default=True)
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="Requests under way at once.")
def bench_priced_together(requests: int, rounds: int, concurrency: str) -> None:
    """In process: requests priced together (one model call a pass) against alone
    (bench/results/priced-together.json)."""
    from fleet.bench.priced_together import run_priced_together

    run_priced_together(RESULTS / "priced-together.json", requests, rounds,
                        tuple(int(c) for c in concurrency.split(",")), log=click.echo)


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




from fleet.cli.bench_fleet import bench_capacity, bench_cost, bench_faults  # noqa: E402

for _command in (bench_capacity, bench_cost, bench_faults):
    bench.add_command(_command)
