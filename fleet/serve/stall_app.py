"""A replica that holds every bid request a while: the ingress's queue and shedding, observed.

``POST <prefix>/openrtb2/bid`` waits ``hold_s`` and answers 204 with the ``x-fleet-arrival``
stamp it received echoed back (``x-seen-arrival``); ``GET <prefix>/calls`` says how many bid
requests reached it. Behind the fleet's HAProxy wrapper, requests beyond the per-replica
``maxconn`` wait in HAProxy's queue and, once that is ``max_queue`` deep, are answered 204
``overload`` by HAProxy without reaching this replica (tests/test_overload.py; the fault bench).
"""

from __future__ import annotations

import asyncio

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fleet.pipeline.deadline import ARRIVAL_HEADER


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Stall:
    def __init__(self, hold_s: float = 0.3):
        self.hold_s = hold_s
        self.calls = 0

    async def __call__(self, request: Request) -> Response:
        if request.url.path.endswith("/calls"):
            return JSONResponse({"calls": self.calls})
        self.calls += 1
        await request.body()
        await asyncio.sleep(self.hold_s)
        return Response(b"", status_code=204, headers={"x-seen-arrival": request.headers.get(ARRIVAL_HEADER, "")})


def build_app(args: dict | None = None) -> serve.Application:
    return Stall.bind(float((args or {}).get("hold_s", 0.3)))
