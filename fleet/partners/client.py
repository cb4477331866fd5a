"""One partner's HTTP side: a pooled keep-alive ``httpx.AsyncClient`` per partner per replica.

A call is bounded by one number, the partner's ``tmax``: the HTTP timeout (connect, write,
read, pool) is that many milliseconds, and the caller also stops waiting then (the fan-out's
deadline). A call never raises: it returns what happened (``CallResult``), so nothing a partner
does can reach the request path as an exception.
"""

from __future__ import annotations

import asyncio
import time
import zlib
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


async def _read_capped(r: httpx.Response) -> bytes | None:
    """The body, gunzipped here with a bound, or None once it passes ``MAX_ANSWER_BYTES``: a
    huge or gzip-bombed answer stops being read there; it neither fills memory nor holds the
    event loop inflating it (httpx's own decoder inflates a whole chunk at once)."""
    enc = r.headers.get("content-encoding", "identity").lower()
    if enc not in ("identity", "gzip"):
        raise ValueError(f"content-encoding {enc}")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if enc == "gzip" else None
    chunks, n = [], 0
    async for raw in r.aiter_raw():
        if inflate is not None:
            raw = inflate.decompress(raw, MAX_ANSWER_BYTES + 1 - n)
            if inflate.unconsumed_tail:
                return None
        n += len(raw)
        if n > MAX_ANSWER_BYTES:
            return None
        chunks.append(raw)
    return b"".join(chunks)


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
                async with self.http.stream("POST", self.spec.endpoint, content=body, headers=headers,
                                            timeout=httpx.Timeout(timeout_s), extensions={"trace": sent}) as r:
                    status, data = r.status_code, await _read_capped(r)
        except (TimeoutError, httpx.TimeoutException):
            return CallResult("timeout", (time.perf_counter() - t0) * 1000.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused/reset, protocol garbage, bad gzip
            return CallResult("error", (time.perf_counter() - t0) * 1000.0, detail=type(exc).__name__)
        ms = (time.perf_counter() - t0) * 1000.0
        if status == 204:
            return CallResult("nobid", ms)
        if status != 200:
            return CallResult("error", ms, detail=f"http_{status}")
        if data is None:
            return CallResult("error", ms, detail="too_large")
        return CallResult("answer", ms, data)

    async def close(self) -> None:
        await self.http.aclose()
