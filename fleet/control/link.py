"""How a region reaches control: one interface, two transports.

Inside one Ray cluster (one machine, tests) the region calls the control actor's handle; from
another cluster (KubeRay in production) it talks HTTP to the control application with the
bearer token, and waits for policy pushes by long-poll. Either way a call that fails or takes
longer than ``timeout_s`` raises, and the region goes on with the leases and policy it holds.
"""

from __future__ import annotations

import asyncio

from fleet.control.messages import Push, Report, decode_push, encode


class RayLink:
    def __init__(self, handle, timeout_s: float = 1.0):
        self.handle = handle
        self.timeout_s = timeout_s

    async def sync(self, report: Report) -> Push:
        return await asyncio.wait_for(self.handle.sync.remote(report), self.timeout_s)

    async def watch(self, epoch: int, wait_s: float) -> Push:
        return await asyncio.wait_for(self.handle.watch.remote(epoch, wait_s), wait_s + self.timeout_s)


class HttpLink:
    def __init__(self, base_url: str, token: str, region: str, timeout_s: float = 1.0):
        import httpx

        self.base = base_url.rstrip("/")
        self.region = region
        self.timeout_s = timeout_s
        self.client = httpx.AsyncClient(headers={"authorization": f"Bearer {token}",
                                                 "content-type": "application/json"})

    async def sync(self, report: Report) -> Push:
        r = await self.client.post(f"{self.base}/v1/regions/{report.region}/sync", content=encode(report),
                                   timeout=self.timeout_s)
        r.raise_for_status()
        return decode_push(r.content)

    async def watch(self, epoch: int, wait_s: float) -> Push:
        r = await self.client.get(f"{self.base}/v1/regions/{self.region}/watch",
                                  params={"epoch": epoch, "wait": wait_s}, timeout=wait_s + self.timeout_s)
        r.raise_for_status()
        return decode_push(r.content)
