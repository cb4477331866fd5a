"""The region's ledger consumer as a Ray actor: named, detached, restarted when it dies.

Thin: it runs ``fleet.ledger.consumer.LedgerConsumer`` and, where the region has cache shards,
a ``fleet.ledger.freq.FreqForwarder`` that takes the billed impressions from the ledger's outbox
to them (frequency counters advance on impressions), and a
``fleet.ledger.partner_notices.PartnerNoticeSender`` that fires demand partners' own notice URLs
queued by the consumer, each as a task of its own: the consumer never waits on a shard or a
partner. A restarted actor resumes from its consumer group's pending entries and from the
outboxes, so a kill loses and double-counts nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

import ray

from fleet.config import load_regions
from fleet.ledger.consumer import OUTBOX_CAP, LedgerConsumer
from fleet.ledger.freq import FreqForwarder
from fleet.ledger.partner_notices import PartnerNoticeSender
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
        # Without shards the outbox is not kept (nothing would drain it).
        self.consumer = LedgerConsumer(region, redis_url, consumer="c0", expire_s=expire_s,
                                       outbox_cap=OUTBOX_CAP if self.cache else 0)
        self.forwarder = FreqForwarder(self.consumer.redis, region, self._billed) if self.cache else None
        self.task = None
        self.fwd_task = None
        cfg = load_regions()
        hosts = {p.id: urlsplit(p.endpoint).hostname or "" for p in cfg.regions[region].partners}
        self.partner_sender = PartnerNoticeSender(self.consumer.redis, self.consumer.prefix, cfg.currencies, hosts=hosts)
        self.pn_task = None

    async def _billed(self, events) -> None:
        # The forwarder removes a batch from the outbox only once the shards took it (acked by
        # Redis, or held in a shard's pending queue while Redis is away); else it retries.
        await self.cache.record_now(events)

    @staticmethod
    def _alive(task, what: str, make):
        if task is None or task.done():
            if task is not None and not task.cancelled() and task.exception():
                log.error("%s stopped: %r; restarting", what, task.exception())
            task = asyncio.get_running_loop().create_task(make())
        return task

    async def start(self) -> bool:
        """Idempotent; the ingresses call it every few seconds, so a consumer task that ended
        (or an actor that restarted) is running again within one period."""
        self.task = self._alive(self.task, f"ledger consumer {self.region}", self.consumer.run)
        if self.forwarder is not None:
            self.fwd_task = self._alive(self.fwd_task, f"ledger forwarder {self.region}", self.forwarder.run)
        self.pn_task = self._alive(self.pn_task, f"partner notices {self.region}", self.partner_sender.run)
        return True

    async def stats(self) -> dict:
        return {"region": self.region, "applied": self.consumer.applied, "duplicates": self.consumer.duplicates,
                "failed_steps": self.consumer.failed_steps, "caught_up": self.consumer.caught_up,
                "dead": self.consumer.dead,
                "outbox": (await self.forwarder.backlog()) if self.forwarder else None,
                "forwarder": self.forwarder.summary() if self.forwarder else None,
                "partner_notices": {**self.partner_sender.summary(), "queued": self.consumer.partner_queued,
                                    "backlog": await self.partner_sender.backlog()},
                "lag": await self.consumer.lag(), "pid": os.getpid(),
                "running": self.task is not None and not self.task.done(),
                "cache": self.cache.summary() if self.cache else None}


class RemoteLedger:
    """What a region replica holds (``fleet.region``): ``start()`` without waiting, ``stats()``."""

    def __init__(self, handle):
        self.handle = handle

    def start(self) -> None:
        self.handle.start.remote()

    async def stats(self) -> dict:
        return await self.handle.stats.remote()


def connect(region: str, redis_url: str, expire_s: float, shard_count: int | None, shard_options: dict,
            resources: dict[str, float] | None = None):
    extra = {"resources": resources} if resources else {}
    h = LedgerRunner.options(name=f"ledger-{region}", namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True, **extra).remote(region, redis_url, expire_s, shard_count,
                                                                 shard_options, resources)
    h.start.remote()
    return h
