"""The fault bench (``fleet bench faults --scenario NAME``): one fault, injected into a running
fleet under steady simulated exchange traffic, judged against the same run's healthy baseline.

A run is one stream of auctions at a constant rate (no diurnal curve, no random bursts; every
exchange sends to its own region through the health-checked DNS, ``fleet.sim.dns``, and skips a
region failing its auctions for the next nearest, ``fleet.sim.ejection``): a warm-up
that is not counted, the baseline, then the fault at ``fault_at`` lasting ``fault_s`` (put right
by ``restore`` where the fault does not end by itself) and ``settle_s`` after it; the fault phase
is everything from the fault on. Every campaign has a flight over the run, half of them tight
budgets that are spent before the end. Then, once every region's ledger has caught up: events
lost (bills the exchange had acknowledged that the ledger does not hold), samples of the
ledger's spend above a campaign's budget (every 2 s), and control's spend against the ledger's.
A scenario with ``partners`` runs on a fleet brought up with the simulated demand partners
(``fleet up --partners sim``: every region calls the same eight servers); the bench then also
samples control's partner counters and policy (``GET /control/v1/partners``) and reports the hung
partner's figures per phase. Figures and targets: ``fleet.bench.fault_report``; results in
``bench/results/faults-<name>.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import redis.asyncio as aredis

from fleet.bench import fault_ops as ops
from fleet.bench import fault_report as report
from fleet.bench.notices import caught_up, ledger_spend
from fleet.ledger.consumer import ledger_prefix
from fleet.runtime import local
from fleet.sim.dns import DNS, DnsSettings
from fleet.sim.ejection import Ejector
from fleet.sim.exchange import Exchanges, SimConfig
from fleet.sim.market import Market
from fleet.sim.pacing import ControlClient
from fleet.sim.scorecard import impression_value

CATALOG = "synth:pacing:20:11"  # the bench's campaigns (fleet up --catalog)
DAY_S = 86_400


@dataclass
class Ctx:
    """What an injector needs: the region it acts on, the fleet's regions, and its own notes."""

    region: str
    regions: object  # RegionsFile
    notes: dict = field(default_factory=dict)


Op = Callable[[Ctx], Awaitable[dict]]


@dataclass
class Scenario:
    name: str
    what: str
    inject: Op | None = None
    restore: Op | None = None  # after fault_s; None: the fault ends by itself (Ray, Serve restart it)
    fault_s: float = 30.0
    settle_s: float = 30.0
    min_settle_s: float = 0.0  # what a short version (Timing.scale) keeps of settle_s at least
    burst: float = 1.0  # offered rate during fault_s, times the baseline's
    replicas: int | None = None  # ingress replicas per region the scenario needs
    remote_pricing: bool = False  # the region prices through its inference deployment
    needs: Callable[[], str | None] | None = None  # why it cannot run in this tree (None: it can)
    partners: bool = False  # the fleet runs with the simulated demand partners (fleet up --partners sim)


def _thread(fn, *args) -> Op:
    async def op(ctx: Ctx) -> dict:
        return await asyncio.to_thread(fn, *args)
    return op


async def _kill_shard(ctx: Ctx) -> dict:
    return await ops.ray_op("shard-kill", ctx.region, "0")


def _delay(seconds: float) -> Op:
    async def op(ctx: Ctx) -> dict:
        return {r: await ops.ray_op("shard-delay", r, str(s.cache_shards), str(seconds))
                for r, s in ctx.regions.regions.items()}
    return op


async def _stop_redis(ctx: Ctx) -> dict:
    doc = await asyncio.to_thread(ops.stop_redis)
    ctx.notes["redis_port"] = doc.get("port")
    return doc


async def _start_redis(ctx: Ctx) -> dict:
    return await asyncio.to_thread(ops.start_redis, ctx.notes["redis_port"])


async def _kill_control(ctx: Ctx) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet.serve.control_actor", "kill", env={**os.environ, **local.ray_env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return {"rc": proc.returncode, "said": out.decode().strip().splitlines()[-1:]}


async def _kill_replica(ctx: Ctx, deployment: str) -> dict:
    return await asyncio.to_thread(ops.sigkill_replica, ctx.region, f"{deployment}-{ctx.region}")


async def _remove_region(ctx: Ctx) -> dict:
    return await asyncio.to_thread(ops.remove_region, ctx.region)


async def _restore_region(ctx: Ctx) -> dict:
    return await asyncio.to_thread(ops.restore_region, ctx.region)


HUNG = "fast"  # the partner the partner-hang scenario hangs: one that normally answers in time


def _hang(on: bool) -> Op:
    async def op(ctx: Ctx) -> dict:
        return await ops.hang_partner(HUNG, on)
    return op


SCENARIOS = {s.name: s for s in [
    Scenario("inference-replica", "the region's inference replica SIGKILLed (remote pricing)",
             lambda c: _kill_replica(c, "inference"), remote_pricing=True),
    Scenario("cache-shard", "one cache shard SIGKILLed (Ray restarts it empty)", _kill_shard),
    Scenario("enrichment-slow", "every cache shard answers 10 ms slower", _delay(0.010), _delay(0.0)),
    Scenario("redis-stop", "Redis stopped for 30 s, then started on its data", _stop_redis, _start_redis),
    Scenario("control-kill", "the control actor killed (Ray restarts it from Redis)", _kill_control),
    Scenario("ingress-kill", "one of two ingress replicas SIGKILLed", lambda c: _kill_replica(c, "ingress"),
             replicas=2),
    Scenario("region-loss", "a whole region's application removed for 90 s, then deployed again",
             _remove_region, _restore_region, fault_s=90.0, settle_s=120.0,
             # the way back: the region warm (~10 s), the DNS's 3 passing checks 10 s apart, its 30 s TTL
             min_settle_s=80.0),
    Scenario("partner-hang", f"demand partner {HUNG!r} stops answering for 30 s (every call held), then answers",
             _hang(True), _hang(False), settle_s=60.0, partners=True),
    Scenario("burst-3x", "offered traffic 3x for 30 s", burst=3.0, settle_s=15.0),
    Scenario("burst-5x", "offered traffic 5x for 30 s", burst=5.0, settle_s=15.0),
]}


class _RunMarket(Market):
    """The market with this run's own request ids: the same seed's stream again, but a fleet that
    saw an earlier run within its dedup window must not take it for resent auctions."""

    def __init__(self, run_tag: str, **kw):
        super().__init__(**kw)
        self.run_tag = run_tag

    def opportunity(self, rng, region, request_id=None):
        opp = super().opportunity(rng, region, request_id)
        opp.request_id = f"{self.run_tag}-{opp.request_id}"
        return opp


def _one_burst(window: tuple[float, float]) -> type[Exchanges]:
    """The exchanges with one burst, at the fault, instead of random ones."""

    class OneBurst(Exchanges):
        def _plan_bursts(self):
            return [window]

    return OneBurst


@dataclass
class Timing:
    warmup_s: float = 15.0
    baseline_s: float = 45.0
    scale: float = 1.0  # fault_s and settle_s times this (the CI's short versions)

    @property
    def fault_at(self) -> float:
        return self.warmup_s + self.baseline_s


QUICK = Timing(warmup_s=8.0, baseline_s=20.0, scale=0.4)


def lengths(sc: Scenario, timing: Timing) -> tuple[float, float]:
    """(fault_s, settle_s) of a run of ``sc`` with ``timing``."""
    return sc.fault_s * timing.scale, max(sc.settle_s * timing.scale, sc.min_settle_s)


async def run_fault(sc: Scenario, base_url: str, control_url: str, token: str, regions, campaigns, redis_url: str,
                    *, rate: float = 60.0, timing: Timing = Timing(), region: str = "us-east", seed: int = 11,
                    tight_usd: float = 0.05, progress=print, plot_dir: Path | None = None) -> dict:
    fault_s, settle_s = lengths(sc, timing)
    duration = timing.fault_at + fault_s + settle_s
    names = list(regions.regions)
    ctl = ControlClient(control_url, token)
    r = aredis.Redis.from_url(redis_url)
    run_id = f"faults-{sc.name}-{int(time.time())}"
    now = time.time()
    budgets = {}
    for i, c in enumerate(campaigns):  # half the flights tight: spent before the end, never above
        budgets[c.id] = tight_usd if i % 2 == 0 else 1e6
        await ctl.put_flight(c.id, {"budget": budgets[c.id], "start": now, "end": now + duration + 5,
                                    "curve": "even", "daily": False}, f"{run_id}-{c.id}")
    days = sorted({int(now // DAY_S), int((now + duration + 120) // DAY_S)})
    before = await ledger_spend(r, names, days)
    cfg = SimConfig(base_url=base_url, duration_s=duration, rate=rate, seed=seed, diurnal_amplitude=0.0,
                    burst_every_s=1e9, burst_len_s=fault_s, burst_factor=max(sc.burst, 1.0),
                    cross_region_share=0.0, drop_rate=0.02, dup_rate=0.02, late_rate=0.05, late_min_s=1.0,
                    late_max_s=5.0, grace_s=8.0, notice_retries=8, imp_exp=60.0)
    market = _RunMarket(f"{int(now):x}", seed=seed, regions=tuple(names))
    dns = DNS(regions.latency_ms, DnsSettings())
    kind = _one_burst((timing.fault_at, timing.fault_at + fault_s)) if sc.burst > 1.0 else Exchanges
    ejector = Ejector(regions.latency_ms)
    ex = kind(market, regions, campaigns, cfg, progress=progress, dns=dns, ejector=ejector)
    ctx = Ctx(region, regions)
    events: list[dict] = []
    samples: list[tuple[float, dict]] = []
    states: list[tuple[float, dict]] = []
    partner_samples: list[tuple[float, dict]] = []  # control's GET /v1/partners, partner scenarios
    ready_samples: list[tuple[float, int, str]] = []  # region-loss: the region's own /ready (report.readiness)
    ready_url = f"{base_url}{regions.regions[region].route_prefix}/ready"
    stop = asyncio.Event()
    t0 = time.perf_counter()

    def at() -> float:
        return round(time.perf_counter() - t0, 2)

    async def fault():
        await asyncio.sleep(timing.fault_at)
        if sc.inject is not None:
            events.append({"t": at(), "event": "inject", **(await sc.inject(ctx))})
            progress(f"[{at():6.1f}s] fault: {sc.what}: {events[-1]}")
        await asyncio.sleep(max(0.0, timing.fault_at + fault_s - (time.perf_counter() - t0)))
        if sc.restore is not None:
            events.append({"t": at(), "event": "restore", **(await sc.restore(ctx))})
            progress(f"[{at():6.1f}s] restored: {events[-1]}")

    async def sampler():
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=2.0) as http:
            while not stop.is_set():
                try:
                    spend = await ledger_spend(r, names, days)
                    samples.append((at(), {k: v - before.get(k, 0.0) for k, v in spend.items()}))
                except Exception:  # Redis away: no sample
                    pass
                try:
                    doc = (await http.get(f"{control_url}/v1/state")).json()
                    states.append((at(), {"failover": doc.get("failover", {}),
                                          "health": {k: v["status"] for k, v in doc.get("health", {}).items()}}))
                except Exception:  # control restarting
                    pass
                if sc.partners:
                    try:
                        partner_samples.append((at(), (await http.get(f"{control_url}/v1/partners")).json()))
                    except Exception:
                        pass
                if sc.name == "region-loss":
                    ready_samples.append((at(), *(await _ready(http, ready_url))))
                try:
                    await asyncio.wait_for(stop.wait(), 2.0)
                except asyncio.TimeoutError:
                    pass

    tasks = [asyncio.create_task(fault()), asyncio.create_task(sampler())]
    records = await ex.run()
    finished = time.time()
    await tasks[0]
    await asyncio.sleep(2.0)
    ok = await caught_up(r, names, finished, wait_s=90.0)
    stop.set()
    await asyncio.gather(*tasks)
    final = {k: v - before.get(k, 0.0) for k, v in (await ledger_spend(r, names, days)).items()}
    view = await ctl.campaigns() or {}
    pipe = r.pipeline(transaction=False)
    for bid, (_, _, reg) in ex.billed.items():
        pipe.hget(f"{ledger_prefix(reg)}bid:{bid}", "billed")
    missing = sum(1 for v in await pipe.execute() if v is None)
    await r.aclose()

    by_id = {c.id: c for c in campaigns}
    value_of = lambda rec: impression_value(market, rec.opp, by_id[rec.campaign_id]) if rec.campaign_id in by_id else 0.0  # noqa: E731
    over = [(t, cid, round(v, 6), budgets[cid]) for t, s in samples for cid, v in s.items()
            if cid in budgets and v > budgets[cid] * (1 + 1e-9)]
    t_ledger = sum(final.get(c, 0.0) for c in budgets)
    t_pacing = sum(view[c]["spent"] for c in budgets if c in view)
    doc = {
        "benchmark": "faults", "scenario": sc.name, "what": sc.what,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "config": {"rate": rate, "region": region, "seed": seed, "timing": asdict(timing), "fault_at_s": timing.fault_at,
                   "fault_s": fault_s, "settle_s": settle_s, "burst": sc.burst, "campaigns": len(budgets),
                   "tight_usd": tight_usd, "catalog": CATALOG},
        "events": events,
        "phases": {"baseline": report.phase(records, timing.warmup_s, timing.fault_at, value_of),
                   "fault": report.phase(records, timing.fault_at, duration, value_of)},
        "money": {"ledger_caught_up": ok, "acknowledged_bills": len(ex.billed), "events_lost": missing,
                  "over_budget_samples": len(over), "over_budget_examples": over[:5],
                  "ledger_usd": round(t_ledger, 6), "control_usd": round(t_pacing, 6),
                  "spend_error": round((t_pacing - t_ledger) / t_ledger, 6) if t_ledger else None,
                  "notice_errors": dict(ex.notice_errors)},
    }
    if sc.burst > 1.0:
        doc["phases"]["burst"] = report.phase(records, timing.fault_at, timing.fault_at + fault_s, value_of)
    if sc.name == "region-loss":
        changes, last = [], {}
        for t, s in states:
            if s["failover"] != last:
                changes.append({"t": t, "failover": s["failover"]})
                last = s["failover"]
        kill = next((e["t"] for e in events if e["event"] == "inject"), timing.fault_at)
        doc["failover"] = {"dns": asdict(dns.s), "dns_events": dns.events, "ejection": asdict(ejector.s),
                           "ejection_events": ejector.events, "control_changes": changes,
                           "restore_at_s": next((e["t"] for e in events if e["event"] == "restore"), None),
                           "resume": report.resume(records, region, kill)}
        doc["failover"]["readiness"] = report.readiness(ready_samples, doc["failover"]["restore_at_s"])
        if plot_dir is not None:
            doc["plot"] = str(report.timeline_plot(records, doc, plot_dir / f"faults-{sc.name}-timeline.png"))
    if sc.partners:
        restore = next((e["t"] for e in events if e["event"] == "restore"), timing.fault_at + fault_s)
        doc["partners"] = report.partner_figures(partner_samples, HUNG, {
            "baseline": (timing.warmup_s, timing.fault_at), "hang": (timing.fault_at, restore),
            "after": (restore, duration)})
    doc["targets"] = report.targets(doc)
    return doc


async def _ready(http: httpx.AsyncClient, url: str) -> tuple[int, str]:
    """One look at a region's ``/ready``: (status or 0 for no answer, what a not-ready one said)."""
    try:
        resp = await http.get(url)
    except Exception as exc:
        return 0, type(exc).__name__
    if resp.status_code == 200:
        return 200, ""
    try:
        doc = resp.json()
        why = (doc.get("warm_error") or doc.get("model_error") or "") if isinstance(doc, dict) else ""
    except ValueError:
        why = resp.text
    return resp.status_code, str(why)[:160]


def skip_reason(sc: Scenario) -> str | None:
    why = sc.needs() if sc.needs is not None else None
    return None if why is None else f"scenario {sc.name} skipped: {why}"


def write(doc: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return out


def summary_lines(doc: dict) -> list[str]:
    lines = []
    for name, p in doc["phases"].items():
        lines.append(f"{name:<9} auctions {p['auctions']:6d}  on time {p['on_time_share']}  bid rate {p['bid_rate']}  "
                     f"degraded {p['degraded_share']}  value/opp {p['value_per_opportunity']}  5xx {p['5xx']}  "
                     f"p99 {p['latency_ms']['p99']} ms")
    m = doc["money"]
    lines.append(f"money     events lost {m['events_lost']} of {m['acknowledged_bills']} acknowledged bills  "
                 f"over budget samples {m['over_budget_samples']}  spend error {m['spend_error']}")
    if "failover" in doc:
        lines.append(f"failover  {doc['failover']['resume']}  dns {doc['failover']['dns_events']}  "
                     f"ejection {doc['failover']['ejection_events'][:6]}")
        rd = doc["failover"].get("readiness") or {}
        if rd.get("restore_at_s") is not None:
            lines.append(f"readiness {doc['config']['region']} deployed again at "
                         f"{rd['restore_at_s']} s: ready {rd['ready_after_restore_s']} s after"
                         f"{' (never within the run)' if rd['ready_at_s'] is None else ''}; said before: "
                         f"{[(x['said'], x['n']) for x in rd['not_ready_said']]}")
    if "partners" in doc:
        for name, f in doc["partners"]["phases"].items():
            lines.append(f"partner   {doc['partners']['partner']} {name:<8} eligible {f['eligible']:5d}  called {f['called']:5d}"
                         f" ({f['called_share']})  in time {f['in_time']:5d}  late {f['late']:5d}  "
                         f"participating {f['participating']:4d}  won {f['won']:3d}")
        for ch in doc["partners"]["policy_changes"]:
            lines.append(f"partner   policy at {ch['t']:6.1f}s  {ch['policy']}")
    for k, v in doc["targets"].items():
        lines.append(f"target    {k:<40} {v['value']!s:<12} {'met' if v['met'] else 'NOT MET'}")
    return lines
