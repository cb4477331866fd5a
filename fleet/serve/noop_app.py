"""The reference ceiling for benchmarks: reads the body, answers 204, does nothing else.

Deployed beside the fleet through the same ingress with the same replica settings, so the ratio
of the bidder's capacity to this one's isolates the cost of the bid path itself.
"""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Noop:
    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(b"", status_code=204)


def build_app(args: dict | None = None) -> serve.Application:
    args = args or {}
    return Noop.options(max_ongoing_requests=int(args.get("max_ongoing_requests", 64))).bind()
