"""A real local HTTP peer for tests (aiohttp, one handler for every path): the simulated
exchange's and the fault bench's clients talk to it as they would to the fleet."""

from __future__ import annotations

from contextlib import asynccontextmanager

from aiohttp import web

from fleet.runtime.local import free_port


@asynccontextmanager
async def local_server(handle, method: str = "*"):
    """Serve ``handle`` on 127.0.0.1; yields the base URL."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
