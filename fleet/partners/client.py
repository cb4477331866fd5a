"""One partner's HTTP side: a pooled keep-alive ``httpx.AsyncClient`` per partner per replica.

A call is bounded by one number, the partner's ``tmax``: the HTTP timeout (connect, write,
read, pool) is that many milliseconds, and the caller also stops waiting then (the fan-out's
deadline). A call never raises: it returns what happened (``CallResult``), so nothing a partner
does can reach the request path as an exception.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from fleet.config import PartnerSpec

MAX_ANSWER_BYTES = 256 * 1024  # a bigger answer is garbage, not a bid


@dataclass(slots=True)
class CallResult:
    outcome: str  # "answer" | "nobid" (204) | "timeout" | "error"
    elapsed_ms: float
    body: bytes = b""
    detail: str = ""  # the error's kind (status code, exception name)


class Sent:
    """Whether the request reached the wire: a call whose time ran out before that was never
    seen by the partner, so it is not counted as called (see ``fanout``). The mark is set in the
    same event-loop step as the headers' write (httpcore's trace runs with no await between),
    so a cancellation cannot fall between the bytes leaving and the mark."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    async def __call__(self, event: str, info) -> None:  # httpcore's trace extension
        if event == "http11.send_request_headers.complete":
            self.done = True


class PartnerClient:
    def __init__(self, spec: PartnerSpec, max_connections: int = 64):
        self.spec = spec
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=30.0)
        self.http = httpx.AsyncClient(limits=limits, http2=False, follow_redirects=False,
                                      headers={"user-agent": "fleet-bidder/1"})

    async def call(self, body: bytes, headers: dict[str, str], deadline: float, sent: Sent) -> CallResult:
        """POST ``body`` and read the answer by ``deadline`` (``time.perf_counter``): the tmax
        the request states, counted from when the fan-out decided it, not from when this task
        first ran."""
        t0 = time.perf_counter()
        timeout_s = deadline - t0
        if timeout_s <= 0:
            return CallResult("timeout", 0.0)
        try:
            async with asyncio.timeout(timeout_s):
                r = await self.http.post(self.spec.endpoint, content=body, headers=headers,
                                         timeout=httpx.Timeout(timeout_s), extensions={"trace": sent})
                data = r.content
        except (TimeoutError, httpx.TimeoutException):
            return CallResult("timeout", (time.perf_counter() - t0) * 1000.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused/reset, protocol garbage, bad gzip
            return CallResult("error", (time.perf_counter() - t0) * 1000.0, detail=type(exc).__name__)
        ms = (time.perf_counter() - t0) * 1000.0
        if r.status_code == 204:
            return CallResult("nobid", ms)
        if r.status_code != 200:
            return CallResult("error", ms, detail=f"http_{r.status_code}")
        if len(data) > MAX_ANSWER_BYTES:
            return CallResult("error", ms, detail="too_large")
        return CallResult("answer", ms, data)

    async def close(self) -> None:
        await self.http.aclose()
