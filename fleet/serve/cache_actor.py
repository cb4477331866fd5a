"""The cache shard as a Ray actor: named per region and index, detached, restarted when it dies.

Thin: every method is ``fleet.cache.shard.Shard``'s. A shard that dies comes back empty under
the same name (``max_restarts=-1``) and reads its users through from Redis on demand, so what
Redis acknowledged survives it. Ingress replicas find the shards by name (``get_if_exists``):
the first replica of a region creates them, the others and later deploys reuse them.
"""

from __future__ import annotations

import logging
import os

import ray

from fleet.cache import wire
from fleet.cache.shard import Shard
from fleet.cache.store import FreqEvent
from fleet.runtime.heap import freeze_startup_heap

NAMESPACE = "fleet-cache"
log = logging.getLogger("ray.serve")


def shard_names(region: str, n: int) -> list[str]:
    return [f"cache-{region}-{i}" for i in range(n)]


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class CacheShard:
    def __init__(self, region: str, name: str, redis_url: str | None, shards: list[str], options: dict):
        self.shard = Shard(region, name, redis_url, shards=shards, **options)
        self.server = None
        freeze_startup_heap()

    async def address(self) -> tuple[str, int]:
        """Where the hot-path socket listens (started on first ask)."""
        if self.server is None:
            self.shard.start()
            self.server = await wire.serve(self.shard, ray.util.get_node_ip_address())
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def lookup(self, users: list[str]):
        return await self.shard.lookup(users)

    async def record(self, events: list[FreqEvent]) -> dict:
        return await self.shard.record(events)

    async def publisher(self, items: list) -> dict:
        return await self.shard.publisher(items)

    async def traffic(self, hours: dict) -> dict:
        return await self.shard.traffic(hours)

    async def snapshot(self) -> dict:
        self.shard.start()
        return self.shard.snapshot()

    async def refresh(self) -> dict:
        await self.shard.refresh()
        return self.shard.snapshot()

    async def stats(self) -> dict:
        return self.shard.stats()

    async def set_delay(self, seconds: float) -> None:
        """Fault injection for drills and tests: make every lookup this slow."""
        self.shard.delay_s = float(seconds)

    def pid(self) -> int:
        return os.getpid()


class RemoteShard:
    """What the ingress holds per shard: lookups and frequency writes over the shard's socket,
    everything else (feedback, features, stats) as Ray actor calls."""

    def __init__(self, handle):
        self.handle = handle
        self.wire = wire.WireClient(self._resolve)

    async def _resolve(self) -> tuple[str, int]:
        return tuple(await self.handle.address.remote())

    async def lookup(self, users: list[str]):
        return await self.wire.lookup(users)

    def lookup_start(self, users: list[str], done) -> None:
        self.wire.lookup_start(users, done)

    async def record(self, events: list[FreqEvent]) -> dict:
        return await self.wire.record(events)

    async def publisher(self, items: list) -> dict:
        return await self.handle.publisher.remote(items)

    async def traffic(self, hours: dict) -> dict:
        return await self.handle.traffic.remote(hours)

    async def snapshot(self) -> dict:
        return await self.handle.snapshot.remote()

    async def stats(self) -> dict:
        return await self.handle.stats.remote()


def connect(region: str, n: int, redis_url: str | None, options: dict,
            resources: dict[str, float] | None = None) -> dict:
    """Actor handles of the region's ``n`` shards, created on first use (on the region's node
    when ``resources`` pins them there: ``fleet.runtime.placement``)."""
    names = shard_names(region, n)
    extra = {"resources": resources} if resources else {}
    return {
        name: CacheShard.options(name=name, namespace=NAMESPACE, lifetime="detached",
                                 get_if_exists=True, **extra).remote(region, name, redis_url, names, options)
        for name in names
    }


def remote_shards(region: str, n: int, redis_url: str | None, options: dict,
                  resources: dict[str, float] | None = None, wait_s: float = 30.0) -> dict:
    """What a region replica's cache client holds: its ``n`` shards by name, as ``RemoteShard``.
    The shards exist before the replica says ready; a slow start degrades (lookups default until
    they answer), never blocks."""
    shards = connect(region, n, redis_url, options, resources)
    try:
        ray.get([h.address.remote() for h in shards.values()], timeout=wait_s)
    except Exception as exc:
        log.warning("cache shards of %s not ready yet (%s): lookups default until they are", region, exc)
    return {name: RemoteShard(h) for name, h in shards.items()}
