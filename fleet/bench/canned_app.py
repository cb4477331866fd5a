"""A Serve app that answers every bid request with the same bid-sized response: Serve's and
uvicorn's cost for a request like a region's (a ~1.5 KB body read, a ~2.1 KB JSON answer with
the bidder's headers), without the bid path. Beside the no-op app (empty answer) it says how much
of a region ingress's CPU outside the fleet's own code is the size of what goes in and out.
``fleet.bench.cost_profile --targets canned`` deploys and drives it."""

from __future__ import annotations

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

BODY = b'{"id":"x","seatbid":[{"bid":[' + b'{"id":"b","impid":"1","price":1.2345,"adm":"' + b"a" * 2084 + b'"}]}]}'
HEADERS = {"content-type": "application/json", "x-openrtb-version": "2.6"}


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Canned:
    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(BODY, status_code=200, headers=HEADERS)


def build_app(args: dict | None = None) -> serve.Application:
    args = args or {}
    return Canned.options(max_ongoing_requests=int(args.get("max_ongoing_requests", 64))).bind()
