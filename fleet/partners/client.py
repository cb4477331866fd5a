"""One partner's HTTP side: a pooled keep-alive ``aiohttp.ClientSession`` per partner per replica.

aiohttp, not httpx (which the issue named): measured against the same local partner server in
another process, an httpx call cost about 0.8 ms of the bidder's CPU and an aiohttp call about
0.2 ms (``python -m fleet.bench.partners --client-cpu``); with seven partners per request that
is most of the fan-out's capacity cost.

A call is bounded by one number, the partner's ``tmax``: the HTTP timeout (the whole call:
connect, write, read) is that many milliseconds, and the caller also stops waiting then (the
fan-out's deadline). A call never raises: it returns what happened (``CallResult``), so nothing
a partner does can reach the request path as an exception.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass

import aiohttp

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
    seen by the partner, so it is not counted as called (see ``fanout``). The mark is set by
    aiohttp's chunk-sent trace, which its writer awaits right before it hands the headers and
    body to the transport with no suspension between (the trace callback never suspends), so a
    cancellation cannot fall between the mark and the bytes leaving."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


async def _on_chunk_sent(_session, ctx, _params) -> None:
    sent = ctx.trace_request_ctx
    if sent is not None:
        sent.done = True


def _trace() -> aiohttp.TraceConfig:
    tc = aiohttp.TraceConfig()
    tc.on_request_chunk_sent.append(_on_chunk_sent)
    return tc


async def _read_capped(r: aiohttp.ClientResponse) -> bytes | None:
    """The body, gunzipped here with a bound, or None once it passes ``MAX_ANSWER_BYTES``: a
    huge or gzip-bombed answer stops being read there; it neither fills memory nor holds the
    event loop inflating it (the session's own decompression is off)."""
    enc = r.headers.get("content-encoding", "identity").lower()
    if enc not in ("identity", "gzip"):
        raise ValueError(f"content-encoding {enc}")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if enc == "gzip" else None
    chunks, n = [], 0
    async for raw in r.content.iter_any():
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
    """The session is made on first use, in the event loop that calls (a replica's constructor
    may run outside it)."""

    def __init__(self, spec: PartnerSpec, max_connections: int = 64):
        self.spec = spec
        self.max_connections = max_connections
        self.http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            conn = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections,
                                        keepalive_timeout=30.0, ttl_dns_cache=300)
            self.http = aiohttp.ClientSession(
                connector=conn, auto_decompress=False, trace_configs=[_trace()],
                headers={"user-agent": "fleet-bidder/1"},
                skip_auto_headers=("accept-encoding",))  # ours says what we can read (outbound)
        return self.http

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
                async with self._session().post(self.spec.endpoint, data=body, headers=headers,
                                                allow_redirects=False, trace_request_ctx=sent,
                                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                    status, data = r.status, await _read_capped(r)
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
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
        if self.http is not None:
            await self.http.close()
