"""The bidder's CPU per partner call, by HTTP client: why the partner client is aiohttp.

The issue asked for pooled keep-alive ``httpx`` clients; this measures what one call costs the
calling process with each, against the same four simulated partners (``fleet.sim.partners --set
fast4``) in a process of their own, so only the client's side is counted (``time.process_time``
of this process). Each round sends one request to each of the four partners at once and waits
for the four answers, like a fan-out; the httpx path is the client as first built (a streamed
POST with httpcore's trace, the raw body read), the aiohttp path is ``PartnerClient`` itself.
``python -m fleet.bench.partner_client --rounds 1500``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

from fleet.bench.partners import start_partners
from fleet.config import PartnerSpec
from fleet.partners.client import PartnerClient, Sent
from fleet.sim.market import Market

HEADERS = {"content-type": "application/json", "x-openrtb-version": "2.6", "accept-encoding": "identity"}


def bodies(n: int, seed: int = 7) -> list[bytes]:
    market, rng = Market(seed=seed), random.Random(seed)
    return [json.dumps(market.opportunity(rng, "us-east", f"c{i}").to_openrtb()).encode() for i in range(n)]


async def _aiohttp_calls(entries: list[dict], reqs: list[bytes], timeout_s: float) -> dict:
    clients = [PartnerClient(PartnerSpec.model_validate({"id": e["id"], "endpoint": e["endpoint"]}))
               for e in entries]

    async def one(c: PartnerClient, body: bytes) -> str:
        return (await c.call(body, HEADERS, time.perf_counter() + timeout_s, Sent())).outcome

    try:
        return await _rounds(lambda body: [one(c, body) for c in clients], reqs)
    finally:
        for c in clients:
            await c.close()


async def _httpx_calls(entries: list[dict], reqs: list[bytes], timeout_s: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)
    clients = [httpx.AsyncClient(limits=limits, http2=False, follow_redirects=False,
                                 headers={"user-agent": "fleet-bidder/1"}) for _ in entries]

    async def trace(_event, _info) -> None:
        return None

    async def one(c: httpx.AsyncClient, url: str, body: bytes) -> str:
        try:
            async with asyncio.timeout(timeout_s):
                async with c.stream("POST", url, content=body, headers=HEADERS, timeout=httpx.Timeout(timeout_s),
                                    extensions={"trace": trace}) as r:
                    b"".join([raw async for raw in r.aiter_raw()])
                    return "answer" if r.status_code == 200 else "nobid" if r.status_code == 204 else "error"
        except (TimeoutError, httpx.TimeoutException):
            return "timeout"

    try:
        return await _rounds(lambda body: [one(c, e["endpoint"], body) for c, e in zip(clients, entries)], reqs)
    finally:
        for c in clients:
            await c.aclose()


async def _rounds(calls, reqs: list[bytes]) -> dict:
    for body in reqs[:50]:  # warm-up: connections, imports
        await asyncio.gather(*calls(body))
    outcomes: dict[str, int] = {}
    cpu0, t0 = time.process_time(), time.perf_counter()
    for body in reqs:
        for o in await asyncio.gather(*calls(body)):
            outcomes[o] = outcomes.get(o, 0) + 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    n = sum(outcomes.values())
    return {"calls": n, "outcomes": outcomes, "cpu_ms_per_call": round(cpu / n * 1000, 4),
            "wall_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1500)
    ap.add_argument("--timeout-ms", type=float, default=200.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    reqs = bodies(args.rounds)
    proc, entries = start_partners("fast4")
    try:
        res = {}
        for name, fn in (("httpx", _httpx_calls), ("aiohttp", _aiohttp_calls), ("httpx_again", _httpx_calls),
                         ("aiohttp_again", _aiohttp_calls)):
            res[name] = asyncio.run(fn(entries, reqs, args.timeout_ms / 1000.0))
    finally:
        proc.terminate()
        proc.wait(10)
    text = json.dumps({"rounds": args.rounds, "partners": len(entries), **res}, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
