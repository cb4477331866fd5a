"""The region's ledger consumer as a Ray actor: named, detached, restarted when it dies.

Thin: it runs ``fleet.ledger.consumer.LedgerConsumer`` and sends billed impressions to the
region's cache shards (frequency counters advance on impressions). A restarted actor resumes
from its consumer group's pending entries, so a kill loses and double-counts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os

import ray

from fleet.ledger.consumer import LedgerConsumer
from fleet.serve.cache_actor import NAMESPACE

log = logging.getLogger("fleet.ledger")


@ray.remote(num_cpus=0, max_restarts=-1)
class LedgerRunner:
    def __init__(self, region: str, redis_url: str, expire_s: float, shard_count: int | None,
                 shard_options: dict, resources: dict[str, float] | None = None):
        self.region = region
        self.cache = None
        if shard_count:
            from fleet.cache.client import CacheClient
            from fleet.serve import cache_actor

            shards = cache_actor.connect(region, shard_count, redis_url, shard_options, resources)
            self.cache = CacheClient({n: cache_actor.RemoteShard(h) for n, h in shards.items()})
        self.consumer = LedgerConsumer(region, redis_url, consumer="c0", expire_s=expire_s,
                                       on_billed=self._billed if self.cache else None)
        self.task = None

    async def _billed(self, events) -> None:
        # Awaited, so the consumer acknowledges its entries only once the shards took them
        # (acked by Redis, or held in a shard's pending queue while Redis is away).
        await self.cache.record_now(events)

    async def start(self) -> bool:
        """Idempotent; the ingresses call it every few seconds, so a consumer task that ended
        (or an actor that restarted) is running again within one period."""
        if self.task is None or self.task.done():
            if self.task is not None and not self.task.cancelled() and self.task.exception():
                log.error("ledger consumer %s stopped: %r; restarting", self.region, self.task.exception())
            self.task = asyncio.get_running_loop().create_task(self.consumer.run())
        return True

    async def stats(self) -> dict:
        return {"region": self.region, "applied": self.consumer.applied, "duplicates": self.consumer.duplicates,
                "failed_steps": self.consumer.failed_steps,
                "lag": await self.consumer.lag(), "pid": os.getpid(),
                "running": self.task is not None and not self.task.done(),
                "cache": self.cache.summary() if self.cache else None}


def connect(region: str, redis_url: str, expire_s: float, shard_count: int | None, shard_options: dict,
            resources: dict[str, float] | None = None):
    extra = {"resources": resources} if resources else {}
    h = LedgerRunner.options(name=f"ledger-{region}", namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True, **extra).remote(region, redis_url, expire_s, shard_count,
                                                                 shard_options, resources)
    h.start.remote()
    return h
