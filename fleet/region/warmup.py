"""A replica's warm start: it says ready only once one bid has been through the whole path.

The first request through a fresh replica pays for what nothing has touched yet: the shards'
sockets (connected on first use), the index's first match, the codecs, the model session's first
call, the response builder. A replica runs one warm-up bid itself before ``/ready`` answers 200
(the exchanges' DNS, ``fleet up`` and the health checks wait for that), so none of the first
exchange requests is the slow one.

The warm-up requests are built from the region's own catalog (for each format, banner, video,
native and audio, its most valuable campaign's country, device, OS, domain and creative of that
format), so targeting finds a candidate, pricing runs and each format's markup is built once. It is an
OpenRTB test request (``test: 1``: nothing reserved, no frequency counted) with a user id of its
own, looked up through every shard; its counters and latencies are not kept, and it emits no
events. The lookups are awaited first; the bid itself runs without an await, so no real request's
counters interleave with it.

Readiness is bounded: each attempt has ``ATTEMPT_S``, and one that has not finished by then is
given up and tried again, with ``/ready``'s ``warm_error`` naming what it was waiting on (a shard's
socket or address, the lookup). A redeployed region's replica that waits on a shard which never
answers says so, instead of a silent 503 for as long as the wait lasts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import msgspec

from fleet.pipeline.bidder import Answer
from fleet.pipeline.deadline import now

log = logging.getLogger("ray.serve")
WARMUP_USER = "fleet-warmup"
ATTEMPT_S = 5.0  # one warm-up attempt's bound (an answering shard takes milliseconds)


NATIVE_REQ = ('{"ver":"1.2","assets":[{"id":1,"required":1,"title":{"len":90}},'
              '{"id":2,"required":1,"img":{"type":3,"w":1200,"h":627}}]}')
FORMATS = ("banner", "video", "native", "audio")  # each has its own markup path: one warm-up bid each


def _imp(cr) -> dict:
    imp: dict = {"id": "1", "bidfloor": 0.01, "bidfloorcur": "USD"}
    if cr is None or cr.format == "banner":
        imp["banner"] = {"w": cr.w or 300, "h": cr.h or 250} if cr is not None else {"w": 300, "h": 250}
    elif cr.format == "video":
        imp["video"] = {"mimes": [cr.mime], "minduration": 1, "maxduration": max(cr.duration_s, 1),
                        "protocols": [2, 3, 7], "w": 640, "h": 360, "plcmt": 1}
    elif cr.format == "audio":
        imp["audio"] = {"mimes": [cr.mime], "minduration": 1, "maxduration": max(cr.duration_s, 1)}
    else:
        imp["native"] = {"request": NATIVE_REQ, "ver": "1.2"}
    return imp


def warmup_request(bidder, n: int = 0, fmt: str = "banner") -> dict:
    """A test bid request the region's best campaign with a creative of ``fmt`` can answer."""
    device: dict = {"ua": "Mozilla/5.0 (Linux; Android 14) Mobile", "ip": "81.2.69.160", "devicetype": 4,
                    "os": "android", "geo": {"country": "USA"}}
    domain, chosen = "news.example", None
    for c in getattr(bidder.index, "campaigns", None) or ():
        t = c.targeting
        cr = next((cr for cr in c.creatives if cr.format == fmt), None)
        if t.deals or t.segments or t.hours_utc or t.days_utc or cr is None:
            continue
        chosen = cr
        if t.countries:
            device["geo"] = {"country": t.countries[0]}
        if t.device_types:
            device["devicetype"] = t.device_types[0]
        if t.os:
            device["os"] = t.os[0]
        if t.domains:
            domain = t.domains[0]
        break
    return {"id": f"{WARMUP_USER}-{bidder.region}-{fmt}-{n}", "imp": [_imp(chosen)], "device": device, "test": 1,
            "site": {"id": "warmup", "domain": domain, "page": f"https://{domain}/"},
            "user": {"id": WARMUP_USER}, "tmax": 1000, "cur": ["USD"], "at": 1}


async def warm(region, n: int = 0, at: list[str] | None = None) -> Answer:
    """One warm-up bid per format through ``region``'s whole path (``fleet.region.runtime.Region``);
    the banner one's answer. ``at``: what it is awaiting now (its one item), for ``warm_up``."""
    b = region.bidder
    at = at if at is not None else [""]
    profile, lookup = None, "off"
    if region.cache is not None:  # every shard's socket, not only the warm-up user's shard
        for name, shard in region.cache.shards.items():
            at[0] = f"shard {name}"
            try:
                await shard.lookup([f"{WARMUP_USER}-{name}"])
            except Exception as exc:  # a shard not up yet: the readiness probe asks again
                raise RuntimeError(f"shard {name}: {exc!r}") from exc
        at[0] = "the warm-up user's lookup"
        profile, lookup = await region.cache.lookup(WARMUP_USER, 1.0)
    at[0] = "the warm-up bids"
    stats, latency = b.stats, b.latency.counts
    b.stats, b.latency.counts = Counter(), {}
    answers = []
    try:  # no await from here on: nothing else runs while the counters are set aside
        for fmt in FORMATS:
            body = msgspec.json.encode(warmup_request(b, n, fmt))
            a = b.admit(body, version="2.6", arrival=now())
            if not isinstance(a, Answer):
                p = b.target(a, profile, lookup)
                a = p if isinstance(p, Answer) else b.price_local(p, region.models.pick() if p.paced else None)
            answers.append(a)
        return answers[0]
    finally:
        b.stats, b.latency.counts = stats, latency


async def warm_up(region, attempt_s: float | None = None) -> None:
    """``warm`` until one attempt succeeds, each bounded by ``attempt_s`` (``ATTEMPT_S``); sets
    ``region.warm`` and, while it is not, ``region.warm_error``: why the last attempt failed or
    what it waited on when it was given up."""
    limit = ATTEMPT_S if attempt_s is None else attempt_s
    n = 0
    while not region.warm:
        at = [""]
        try:
            await asyncio.wait_for(warm(region, n, at), limit)
            region.warm, region.warm_error = True, ""
            return
        except asyncio.TimeoutError:
            region.warm_error = f"warm-up attempt {n + 1} gave up after {limit:g} s waiting on {at[0]}"
            log.warning("region %s not ready: %s", region.name, region.warm_error)
        except Exception as exc:
            region.warm_error = repr(exc)[:200]
        n += 1
        await asyncio.sleep(min(0.1 * n, 2.0))
