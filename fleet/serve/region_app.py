"""The region's Serve application: routing and lifecycle glue around ``fleet.region.Region``.

Routes under the region's prefix: ``POST /openrtb2/bid``, ``GET /notice/{win|bill|loss|click}``,
``GET /ready``, ``GET /stats``, ``GET /cache`` (every shard's own figures). The deployment reads
the request (the body under the size cap), asks the region and writes the response; Serve's
``reconfigure`` (``user_config``: model, candidate) and shutdown hook go to the region. What is
Ray's is here: the replica's id and the handles of the region's other processes (cache shards,
ledger consumer, the control actor, the inference deployment), passed to the region as its
components (``connect``).
"""

from __future__ import annotations

import os

import msgspec
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from fleet.config import RegionAppArgs, RegionsFile, load_regions
from fleet.pipeline.deadline import now
from fleet.region.runtime import Region, needs
from fleet.runtime.placement import region_resources
from fleet.serve import bid_front

_json = msgspec.json.Encoder()
ACCESS_LOG_OFF = {"enable_access_log": False}


def _json_response(status: int, obj) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json")


def plain_headers(scope) -> dict[str, str]:
    """The request's headers as a plain dict: names lower-case (ASGI's), a repeated name's first
    value, as Starlette's ``Headers.get`` answers. The bid path reads several of them (arrival
    stamp, encodings, version, trace context, length): a dict's lookups cost ~1 us a request,
    Starlette's ~4 (each lower-cases, encodes and scans the list; a miss raises inside)."""
    out: dict[str, str] = {}
    for k, v in scope["headers"]:
        name = k.decode("latin-1")
        if name not in out:
            out[name] = v.decode("latin-1")
    return out


async def read_capped(request: Request, limit: int, headers=None) -> bytes | None:
    """The body, or None when it is over ``limit`` (stops reading as soon as it is).
    ``headers``: the request's, when the caller already has them in a mapping."""
    declared = (headers if headers is not None else request.headers).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def connect(a: RegionAppArgs, config: RegionsFile, replica: str, inference=None) -> Region:
    """The region with its Ray-backed components: the ones ``needs`` asks for, created on first
    use by whichever replica comes first (named actors), on the region's node when pinned."""
    from fleet.serve import cache_actor, control_actor, ledger_actor
    from fleet.serve.inference_app import InferenceClient

    d, spec = config.defaults, config.regions[a.region]
    redis_url = os.environ.get("REDIS_URL") or None
    resources = region_resources(a.region, a.region_resource)
    need = needs(a, config, redis_url)
    shards = link = ledger = None
    if need.cache:
        shards = cache_actor.remote_shards(a.region, spec.cache_shards, redis_url, d.cache.shard_options(), resources)
    if need.control and not d.control.url:
        link = control_actor.region_link(a.regions_file, a.catalog, d.control.sync_timeout_s, a.region_resource)
    if need.stream:  # the consumer feeds billed impressions to the shards whenever the region has them
        ledger = ledger_actor.RemoteLedger(ledger_actor.connect(
            a.region, redis_url, d.ledger.expire_s, spec.cache_shards if d.cache.enabled else None,
            d.cache.shard_options(), resources))
    return Region(a, config=config, replica=replica, redis_url=redis_url, shards=shards, link=link, ledger=ledger,
                  inference=InferenceClient(inference) if inference is not None else None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class RegionIngress:
    front: bid_front.BidFront | None = None  # none until the constructor binds one

    def __init__(self, args: dict, inference=None):
        """``inference``: the DeploymentHandle of the region's inference, when it prices remotely."""
        a = RegionAppArgs.model_validate(args)
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (plain-Python use)
            replica = "local"
        self.region = connect(a, load_regions(a.regions_file), replica, inference)
        # bids past Serve's HTTP, when the fleet's HAProxy wrapper can route them (docs/ingress.md)
        self.front = bid_front.from_env(self.region, replica)
        if self.front is not None:  # a bid priced alone when it is the only one the front has
            self.region.local.peers = self.front.under_way

    def reconfigure(self, user_config: dict) -> None:
        """``user_config: {model: name/version}`` in serve_config.yaml: switch in place."""
        self.region.reconfigure(user_config)

    async def __del__(self) -> None:
        """Serve's shutdown hook (scale-down, redeploy): flush buffered events, or spill them."""
        if self.front is not None:
            await self.front.drain()
            self.front.close()
        await self.region.stop()

    async def check_health(self) -> None:
        """Serve's periodic health check: also starts the region's loops and its warm-up on a
        replica that no request has reached yet (so it becomes ready by itself). The first runs
        before Serve marks the replica running: the bid front serves from then on."""
        if self.front is not None:
            await self.front.start()
        self.region.start()

    async def __call__(self, request: Request) -> Response:
        arrival = now()  # the handler's first reading; the ingress's stamp, when present, is earlier
        region = self.region
        # Serve puts the application's route prefix in root_path: strip whatever it is, so the
        # same region can also be deployed under another prefix (a canary, a test). The scope's
        # path, not ``request.url.path``: Starlette builds the whole URL for that (host header
        # parsed, joined, split again: ~8 us a request in the replica).
        scope = request.scope
        path = scope["path"]
        root = scope.get("root_path") or region.prefix
        if path.startswith(root):
            path = path[len(root):]
        method = request.method
        if path == "/openrtb2/bid":
            if method != "POST":
                return _json_response(405, bid_front.NOT_POST_ERROR)
            headers = plain_headers(scope)
            body = await read_capped(request, region.max_body, headers)
            if body is None:
                return _json_response(413, bid_front.TOO_LARGE_ERROR)
            a = await region.bid(body, headers, arrival)
            return Response(a.body, status_code=a.status, headers=a.headers)
        if path.startswith("/notice/") and method == "GET":
            status, reason = await region.notice(path[8:], request.url.query)
            return Response(b"", status_code=200) if status == 200 else _json_response(status, {"error": reason})
        if path == "/ready":  # 503 until the replica's warm-up bid has been through the path
            ready = region.ready()
            return _json_response(200 if ready["ready"] else 503, ready)
        if path == "/stats":
            stats = region.stats()
            if self.front is not None:
                stats["bid_front"] = self.front.stats()
            return _json_response(200, stats)
        if path == "/cache" and region.cache is not None:
            return _json_response(200, await region.cache_stats())
        return _json_response(404, {"error": f"no route {path}"})


def build_app(args: RegionAppArgs) -> serve.Application:
    """App builder for ``serve_config.yaml``: deployment options come from ``regions.yaml``."""
    if isinstance(args, dict):
        args = RegionAppArgs.model_validate(args)
    spec = load_regions(args.regions_file).regions[args.region]
    resources = region_resources(args.region, args.region_resource)
    inference = None
    if args.pricing == "remote":
        from fleet.serve.inference_app import DEFAULT_BATCH, Inference

        inference = Inference.options(
            name=f"inference-{args.region}", num_replicas=args.inference_replicas,
            ray_actor_options={"num_cpus": 0, "num_gpus": args.num_gpus, "resources": resources},
            user_config=DEFAULT_BATCH,
        ).bind({"backend": args.model_backend})
    return RegionIngress.options(
        name=f"ingress-{args.region}",
        user_config={"model": args.model},
        num_replicas=spec.replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options={"num_cpus": spec.num_cpus, "resources": resources},
        # No Serve access log line per request (~20 us of the replica's CPU each, a file write
        # and a stderr write): the region counts and times every request itself (/stats, the
        # fleet_* metrics, traces of degraded and failed ones); Serve's own logs stay on.
        logging_config=ACCESS_LOG_OFF,
    ).bind(args.model_dump(exclude={"model"}), inference)  # the model travels in user_config only
