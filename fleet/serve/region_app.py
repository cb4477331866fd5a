"""The region's Serve application: one ingress deployment wrapping ``RegionBidder``.

Thin on purpose: route the path, read the body under the size cap, call the plain-Python bidder
and turn its ``Answer`` into a response. Routes under the region's prefix:
``POST /openrtb2/bid``, ``GET /notice/{win|bill|loss}``, ``GET /ready``, ``GET /stats``.
"""

from __future__ import annotations

import msgspec
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from fleet.campaigns.catalog import load_catalog
from fleet.config import RegionAppArgs, load_regions
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.deadline import now
from fleet.pipeline.notices import NoticeCounter

_json = msgspec.json.Encoder()


def _json_response(status: int, obj) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json")


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (stops reading as soon as it is)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class RegionIngress:
    def __init__(self, args: dict):
        a = RegionAppArgs.model_validate(args)
        config = load_regions(a.regions_file)
        catalog = load_catalog(a.catalog or config.defaults.catalog)
        self.region = a.region
        self.bidder = RegionBidder(a.region, config, catalog)
        self.notices = NoticeCounter()
        self.max_body = config.defaults.max_body_bytes
        self.prefix = config.regions[a.region].route_prefix

    async def __call__(self, request: Request) -> Response:
        arrival = now()
        path = request.url.path
        if path.startswith(self.prefix):
            path = path[len(self.prefix):]
        method = request.method
        if path == "/openrtb2/bid":
            if method != "POST":
                return _json_response(405, {"error": "use POST"})
            body = await read_capped(request, self.max_body)
            if body is None:
                return _json_response(413, {"error": "body over the size limit", "nbr": 2})
            h = request.headers
            a = self.bidder.bid(
                body,
                content_encoding=h.get("content-encoding"),
                accept_encoding=h.get("accept-encoding"),
                version=h.get("x-openrtb-version"),
                arrival=arrival,
            )
            return Response(a.body, status_code=a.status, headers=a.headers)
        if path.startswith("/notice/") and method == "GET":
            status, reason = self.notices.handle(path[8:], request.url.query, self.region)
            if status == 200:
                return Response(b"", status_code=200)
            return _json_response(status, {"error": reason})
        if path == "/ready":
            return _json_response(200, {"region": self.region, "campaigns": len(self.bidder.index)})
        if path == "/stats":
            return _json_response(200, {"bidder": dict(self.bidder.stats), "notices": dict(self.notices.counts)})
        return _json_response(404, {"error": f"no route {path}"})


def build_app(args: RegionAppArgs) -> serve.Application:
    """App builder for ``serve_config.yaml``: deployment options come from ``regions.yaml``."""
    if isinstance(args, dict):
        args = RegionAppArgs.model_validate(args)
    spec = load_regions(args.regions_file).regions[args.region]
    return RegionIngress.options(
        name=f"ingress-{args.region}",
        num_replicas=spec.replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options={"num_cpus": spec.num_cpus},
    ).bind(args.model_dump())
