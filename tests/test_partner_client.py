"""The partner client's own promises (``fleet.partners.client``), against a real local server.

A call never raises and is bounded by its deadline; ``Sent`` is set only once the request was
handed to the connection: a call that ran out of time waiting for the pool (or before it
started) was never seen by the partner, and the fan-out must not count it as called.
"""

from __future__ import annotations

import asyncio
import gzip
import time

from aiohttp import web

from fleet.config import PartnerSpec
from fleet.partners.client import PartnerClient, Sent


async def _server(handler):
    app = web.Application()
    app.router.add_post("/bid", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/bid"


def _client(url: str, max_connections: int = 64) -> PartnerClient:
    return PartnerClient(PartnerSpec(id="p", endpoint=url), max_connections)


def test_answers_nobids_gzip_and_a_past_deadline():
    seen = []

    async def handler(req: web.Request):
        seen.append(await req.read())
        kind = req.headers.get("x-kind")
        if kind == "nobid":
            return web.Response(status=204)
        if kind == "gzip":
            return web.Response(body=gzip.compress(b'{"id":"r"}'), headers={"content-encoding": "gzip"})
        if kind == "br":
            return web.Response(body=b"x", headers={"content-encoding": "br"})
        return web.Response(body=b'{"id":"r"}')

    async def go():
        runner, url = await _server(handler)
        c = _client(url)
        try:
            out = {}
            for kind in ("plain", "nobid", "gzip", "br"):
                sent = Sent()
                out[kind] = (await c.call(b"{}", {"x-kind": kind}, time.perf_counter() + 2.0, sent), sent.done)
            past = Sent()
            late = await c.call(b"{}", {}, time.perf_counter() - 0.001, past)
        finally:
            await c.close()
            await runner.cleanup()
        assert out["plain"][0].outcome == "answer" and out["plain"][0].body == b'{"id":"r"}' and out["plain"][1]
        assert out["nobid"][0].outcome == "nobid" and out["nobid"][1]
        assert out["gzip"][0].outcome == "answer" and out["gzip"][0].body == b'{"id":"r"}'
        assert out["br"][0].outcome == "error"  # an encoding we did not offer is not read
        assert late.outcome == "timeout" and not past.done
        assert len(seen) == 4  # the past-deadline call never reached the server

    asyncio.run(go())


def test_a_call_out_of_time_in_a_full_pool_was_never_sent():
    """One connection, held by a hanging call: the second call's time runs out waiting for it."""
    entered = []

    async def hang(req: web.Request):
        entered.append(await req.read())
        await asyncio.sleep(5)
        return web.Response(status=204)

    async def go():
        runner, url = await _server(hang)
        c = _client(url, max_connections=1)
        try:
            s1, s2 = Sent(), Sent()
            t0 = time.perf_counter()
            first = asyncio.create_task(c.call(b"{}", {}, t0 + 0.4, s1))
            await asyncio.sleep(0.05)
            second = await c.call(b"{}", {}, time.perf_counter() + 0.1, s2)
            first = await first
        finally:
            await c.close()
            await runner.cleanup()
        assert first.outcome == "timeout" and s1.done  # on the wire, cut at its deadline
        assert second.outcome == "timeout" and not s2.done  # never left the pool's queue
        assert len(entered) == 1

    asyncio.run(go())


def test_a_refused_connection_is_an_error_not_an_exception():
    async def go():
        c = _client("http://127.0.0.1:9/bid")  # discard port: nothing listens
        try:
            sent = Sent()
            res = await c.call(b"{}", {}, time.perf_counter() + 1.0, sent)
        finally:
            await c.close()
        assert res.outcome == "error" and res.detail and not sent.done

    asyncio.run(go())
