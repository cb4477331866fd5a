"""The enrichment lookup's round trip from a busy event loop: callbacks against tasks.

A cache shard (``fleet.cache.shard.Shard`` behind ``fleet.cache.wire``) runs in its own process.
This process plays an ingress replica: requests arrive at a steady rate, each spends CPU before
and after its lookup (parsing, the later stages) on the one event loop, and the lookup goes
through ``CacheClient`` to the shard's socket. Measured: the lookup stage as the request sees
it (submit to resumption), p50 and p99, for the two ways the per-shard micro-batcher can work:
sending and answering through callbacks (``lookup_start``, what the fleet uses) or through a
task per batch awaiting the answer (the reference). Rounds interleaved, same run, same shard.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

USERS = 2_000


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Tasks:
    """The shard as the reference sees it: only the awaitable ``lookup``."""

    def __init__(self, wire_client):
        self.wire = wire_client

    async def lookup(self, users):
        return await self.wire.lookup(users)


class _Callbacks(_Tasks):
    def lookup_start(self, users, done):
        self.wire.lookup_start(users, done)


async def _measure(port: int, callbacks: bool, rate: float, seconds: float, cpu_s: float) -> dict:
    from fleet.cache.client import CacheClient
    from fleet.cache.wire import WireClient

    async def resolve():
        return "127.0.0.1", port

    wc = WireClient(resolve)
    client = CacheClient({"s0": (_Callbacks if callbacks else _Tasks)(wc)})
    waits: list[float] = []
    hits = 0

    async def request(i: int) -> None:
        nonlocal hits
        _busy(cpu_s / 2)  # admission: parse and check
        t0 = time.perf_counter()
        p, how = await client.lookup(f"u{i % USERS}", 0.05)
        waits.append(time.perf_counter() - t0)
        hits += how == "hit"
        _busy(cpu_s / 2)  # targeting, pricing, the answer

    for i in range(200):  # connect and warm up
        await request(i)
    waits.clear()
    hits = 0
    loop = asyncio.get_running_loop()
    tasks = []
    start = loop.time()
    n = 0
    while loop.time() - start < seconds:
        n += 1
        tasks.append(loop.create_task(request(n)))
        await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
    await asyncio.gather(*tasks)
    wc.close()
    waits.sort()
    return {"n": len(waits), "hits": hits, "p50_ms": round(waits[len(waits) // 2] * 1e3, 4),
            "p99_ms": round(waits[int(len(waits) * 0.99)] * 1e3, 4)}


def run_lookup_bench(out: Path, rate: float = 600.0, seconds: float = 4.0, rounds: int = 4,
                     cpu_us: float = 600.0, log=print) -> dict:
    shard = subprocess.Popen([sys.executable, "-m", "fleet.bench.lookups"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(shard.stdout.readline())
        runs: dict[str, list[dict]] = {"tasks": [], "callbacks": []}
        for r in range(rounds):
            for kind in ("tasks", "callbacks") if r % 2 == 0 else ("callbacks", "tasks"):
                res = asyncio.run(_measure(port, kind == "callbacks", rate, seconds, cpu_us / 1e6))
                runs[kind].append(res)
                log(f"  {kind:<9} p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                    f"({res['n']} lookups, {res['hits']} hits)")
    finally:
        shard.terminate()
        shard.wait(10)
    med = {k: {q: statistics.median(x[q] for x in v) for q in ("p50_ms", "p99_ms")} for k, v in runs.items()}
    doc = {"benchmark": "lookups", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "rate_per_s": rate, "seconds": seconds, "rounds": rounds,
           "request_cpu_us": cpu_us, "median": med,
           "ratio_p50_callbacks_vs_tasks": round(med["callbacks"]["p50_ms"] / med["tasks"]["p50_ms"], 3),
           "ratio_p99_callbacks_vs_tasks": round(med["callbacks"]["p99_ms"] / med["tasks"]["p99_ms"], 3),
           "runs": runs}
    log(f"lookup as the request sees it, callbacks / tasks: p50 {doc['ratio_p50_callbacks_vs_tasks']}, "
        f"p99 {doc['ratio_p99_callbacks_vs_tasks']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


async def _serve_shard() -> None:
    from fleet.cache import wire
    from fleet.cache.shard import Shard
    from fleet.cache.store import FreqEvent

    shard = Shard("bench", "s0", None)
    now = time.time()
    await shard.record([FreqEvent(f"u{i}", "c1", f"e{i}", now, ("seg-a",)) for i in range(USERS)])
    shard.lookup_now([f"u{i}" for i in range(USERS)])  # first lookups fill in the background
    await asyncio.sleep(0.5)
    server = await wire.serve(shard)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # the shard's process (run_lookup_bench starts it)
    asyncio.run(_serve_shard())
