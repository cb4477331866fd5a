"""A replica's warm start: it says ready only once one bid has been through the whole path.

The first request through a fresh replica pays for what nothing has touched yet: the shards'
sockets (connected on first use), the index's first match, the codecs, the model session's first
call, the response builder. A replica runs one warm-up bid itself before ``/ready`` answers 200
(the exchanges' DNS, ``fleet up`` and the health checks wait for that), so none of the first
exchange requests is the slow one.

The warm-up request is built from the region's own catalog (its most valuable campaign's country,
device, OS, domain and first creative), so targeting finds a candidate and pricing runs. It is an
OpenRTB test request (``test: 1``: nothing reserved, no frequency counted) with a user id of its
own, looked up through every shard; its counters and latencies are not kept, and it emits no
events. The lookups are awaited first; the bid itself runs without an await, so no real request's
counters interleave with it.
"""

from __future__ import annotations

import logging
from collections import Counter

import msgspec

from fleet.pipeline.bidder import Answer
from fleet.pipeline.deadline import now

log = logging.getLogger("ray.serve")
WARMUP_USER = "fleet-warmup"


def warmup_request(bidder, n: int = 0) -> dict:
    """A test bid request the region's best campaign can answer."""
    imp: dict = {"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01, "bidfloorcur": "USD"}
    device: dict = {"ua": "Mozilla/5.0 (Linux; Android 14) Mobile", "ip": "81.2.69.160", "devicetype": 4,
                    "os": "android"}
    domain = "news.example"
    for c in getattr(bidder.index, "campaigns", None) or ():
        t = c.targeting
        if t.deals or t.segments or t.hours_utc or t.days_utc or not c.creatives:
            continue
        cr = c.creatives[0]
        if cr.format == "banner" and cr.w and cr.h:
            imp["banner"] = {"w": cr.w, "h": cr.h}
        elif cr.format == "video":
            imp.pop("banner")
            imp["video"] = {"mimes": [cr.mime], "minduration": 1, "maxduration": max(cr.duration_s, 1),
                            "protocols": [2, 3, 7], "w": 640, "h": 360}
        if t.countries:
            device["geo"] = {"country": t.countries[0]}
        if t.device_types:
            device["devicetype"] = t.device_types[0]
        if t.os:
            device["os"] = t.os[0]
        if t.domains:
            domain = t.domains[0]
        break
    device.setdefault("geo", {"country": "USA"})
    return {"id": f"{WARMUP_USER}-{bidder.region}-{n}", "imp": [imp], "device": device, "test": 1,
            "site": {"id": "warmup", "domain": domain, "page": f"https://{domain}/"},
            "user": {"id": WARMUP_USER}, "tmax": 1000, "cur": ["USD"], "at": 1}


async def warm(region, n: int = 0) -> Answer:
    """One warm-up bid through ``region``'s whole path (``fleet.region.runtime.Region``)."""
    b = region.bidder
    body = msgspec.json.encode(warmup_request(b, n))
    profile, lookup = None, "off"
    if region.cache is not None:  # every shard's socket, not only the warm-up user's shard
        for name, shard in region.cache.shards.items():
            try:
                await shard.lookup([f"{WARMUP_USER}-{name}"])
            except Exception as exc:  # a shard not up yet: the readiness probe asks again
                raise RuntimeError(f"shard {name}: {exc!r}") from exc
        profile, lookup = await region.cache.lookup(WARMUP_USER, 1.0)
    stats, latency = b.stats, b.latency.counts
    b.stats, b.latency.counts = Counter(), {}
    try:  # no await from here on: nothing else runs while the counters are set aside
        a = b.admit(body, version="2.6", arrival=now())
        if isinstance(a, Answer):
            return a
        p = b.target(a, profile, lookup)
        if isinstance(p, Answer):
            return p
        return b.price_local(p, region.models.pick() if p.paced else None)
    finally:
        b.stats, b.latency.counts = stats, latency
