"""The control application: the HTTP API at ``/control/v1/...`` in front of the control actor,
and the dashboard page at ``/control/``.

Thin: check the bearer token, read the body (capped), pass method, path, query, body and the
``Idempotency-Key`` to the actor's router (``fleet.control.api``), return its JSON.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from fleet.control.auth import authorized, load_token
from fleet.serve.region_app import read_capped

MAX_BODY = 1 << 20
_json = msgspec.json.Encoder()


def _resp(status: int, obj) -> Response:
    return Response(_json.encode(obj), status_code=status, media_type="application/json")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class ControlAPI:
    def __init__(self, regions_file: str = "regions.yaml", catalog: str | None = None, head: bool = False):
        from fleet.serve import control_actor

        self.token = load_token()
        self.page = (Path(__file__).resolve().parents[1] / "control" / "dashboard.html").read_bytes()
        self.actor = control_actor.connect(regions_file, catalog=catalog, pin_head=head)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path") or "/control"
        if path.startswith(root):
            path = path[len(root):]
        if path in ("", "/", "/dashboard") and request.method == "GET":
            # The page itself is static and holds nothing; its data calls carry the token.
            return Response(self.page, media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-store", "x-frame-options": "DENY",
                                     "content-security-policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                                "style-src 'unsafe-inline'"})
        if path == "/ready" and request.method == "GET":  # a readiness probe carries no token
            return _resp(200, {"ready": True, "epoch": await self.actor.start.remote()})
        if not authorized(request.headers.get("authorization"), self.token):
            return _resp(401, {"error": "bearer token required"})
        body = await read_capped(request, MAX_BODY)
        if body is None:
            return _resp(413, {"error": "body over the size limit"})
        status, out = await self.actor.route.remote(request.method, path, request.url.query, body,
                                                    request.headers.get("idempotency-key"))
        return _resp(status, out)


def build_app(args: dict | None = None) -> serve.Application:
    """``args``: regions_file, catalog, and ``head`` (true on a cluster of several nodes: the API
    and the control actor stay on the head; ``fleet.runtime.placement``)."""
    from fleet.runtime.placement import head_resources

    args = args or {}
    head = bool(args.get("head", False))
    return ControlAPI.options(
        name="control-api", ray_actor_options={"num_cpus": 0, "resources": head_resources(head)},
    ).bind(args.get("regions_file", "regions.yaml"), args.get("catalog"), head)
