"""The central control actor: one detached, named actor (``control``), restarted when it dies.

Thin: it runs ``fleet.control.service.Control`` and its control interval. A restarted actor
loads its state from Redis and carries on; regions hold leases meanwhile and stop spending if
it stays away longer than a lease lives.
"""

from __future__ import annotations

import asyncio
import logging
import os

import ray

from fleet.control.messages import Push, Report
from fleet.serve.cache_actor import NAMESPACE

log = logging.getLogger("fleet.control")
NAME = "control"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class ControlActor:
    def __init__(self, regions_file: str, redis_url: str | None, catalog: str | None = None):
        from fleet.campaigns.catalog import load_catalog
        from fleet.config import load_regions
        from fleet.control.service import Control

        config = load_regions(regions_file)
        redis = None
        if redis_url:
            from fleet.cache.shard import redis_client

            redis = redis_client(redis_url, decode=True, timeout_s=1.0)
        self.control = Control(config, redis, catalog=load_catalog(catalog or config.defaults.catalog))
        self.task = None
        self.started = False

    async def start(self) -> int:
        """Idempotent: load state and run the control interval (callers need not know whether
        the actor just restarted)."""
        if not self.started:
            try:
                await self.control.start()
            except Exception as exc:  # Redis away at start: run from memory, persist when it returns
                log.error("control state not loaded: %s", exc)
                self.control.epoch += 1
            self.started = True
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._loop())
        return self.control.epoch

    async def _loop(self) -> None:
        from fleet.obs.metrics import ControlMetrics

        metrics = ControlMetrics()
        dt = self.control.settings.interval_s
        while True:
            await asyncio.sleep(dt)
            try:
                if not self.control.loaded:  # Redis was away at start: read the state when it is back
                    await self.control.start()
                await self.control.tick(dt)
                metrics.export(self.control)
            except Exception as exc:
                log.exception("control tick failed: %s", exc)

    async def sync(self, report: Report) -> Push:
        await self.start()
        return await self.control.sync(report)

    async def watch(self, epoch: int, wait_s: float) -> Push:
        await self.start()
        return await self.control.watch(epoch, wait_s)

    async def route(self, method: str, path: str, query: str, body: bytes, idem: str | None):
        from fleet.control.api import route

        await self.start()
        return await route(self.control, method, path, query, body, idem)

    def pid(self) -> int:
        return os.getpid()


def connect(regions_file: str = "regions.yaml", redis_url: str | None = None, catalog: str | None = None,
            pin_head: bool = False):
    """The control actor, created on first use (``get_if_exists``: every caller gets the one);
    ``pin_head`` keeps it on the head node, so losing a worker node never takes control along."""
    from fleet.runtime.placement import head_resources

    redis_url = redis_url if redis_url is not None else os.environ.get("REDIS_URL")
    extra = {"resources": head_resources(True)} if pin_head else {}
    h = ControlActor.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                             max_concurrency=256, **extra).remote(regions_file, redis_url, catalog)
    h.start.remote()
    return h


def region_link(regions_file: str, catalog: str | None, timeout_s: float, pin_head: bool = False):
    """A region replica's link to the control actor (inside one Ray cluster)."""
    from fleet.control.link import RayLink

    return RayLink(connect(regions_file, catalog=catalog, pin_head=pin_head), timeout_s)


def kill(address: str = "auto") -> str:
    """Kill the control actor the way a crash would (Ray restarts it; it reloads from Redis).
    Run as its own process (``python -m fleet.serve.control_actor kill``) so that a load
    generator never shares its interpreter with a Ray driver."""
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        h = ray.get_actor(NAME, namespace=NAMESPACE)
        pid = ray.get(h.pid.remote(), timeout=10)
        ray.kill(h, no_restart=False)
        return f"control actor (pid {pid}) killed; it restarts from Redis"
    finally:
        ray.shutdown()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["kill"]:
        raise SystemExit("usage: python -m fleet.serve.control_actor kill")
    print(kill())
