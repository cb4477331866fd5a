"""The inference deployment: batched model scoring for regions that price remotely (GPU regions).

Thin: ``@serve.multiplexed`` keeps up to two model versions loaded per replica (a canary beside
the current version), ``@serve.batch`` gathers the rows of concurrent requests into one model
call and hands each caller back its own rows. Batch size and wait are ``user_config`` so they
can be tuned in place. The ingress calls it with all candidate rows of one request, through its
micro-batcher (``InferenceClient``), and waits no longer than its pricing budget
(``fleet.region.pricing``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from fleet.ml.features import N_FEATURES
from fleet.ml.scorer import Scorer, load_scorer
from fleet.serve.microbatch import MicroBatcher

DEFAULT_BATCH = {"max_batch_size": 256, "batch_wait_timeout_s": 0.0005}
CONCURRENT_BATCHES = 2  # one batch on the model thread while the next is gathered or the last answered


def split_rows(scorer: Scorer, parts: list[np.ndarray]) -> list[np.ndarray]:
    """One model call over the concatenated parts, cut back into one result per part."""
    sizes = [len(p) for p in parts]
    out = scorer.predict(np.concatenate(parts).astype(np.float32, copy=False)) if sum(sizes) else np.empty(0)
    return list(np.split(np.asarray(out), np.cumsum(sizes)[:-1]))


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
class Inference:
    def __init__(self, args: dict | None = None):
        args = args or {}
        self.backend = args.get("backend", "auto")
        self.threads = int(args.get("threads", 1))
        # The model runs on one thread of its own, off the event loop: while it scores one batch
        # the loop takes in (deserialises) the next and sends back the last, so batches overlap
        # their transport with the model instead of queueing behind it. One thread keeps model
        # calls in order and the pinned thread count true.
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")

    def reconfigure(self, config: dict) -> None:
        cfg = {**DEFAULT_BATCH, **(config or {})}
        self.score.set_max_batch_size(int(cfg["max_batch_size"]))
        self.score.set_batch_wait_timeout_s(float(cfg["batch_wait_timeout_s"]))

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> Scorer:
        scorer = load_scorer(model_id, self.backend, self.threads)
        scorer.predict(np.zeros((1, N_FEATURES), np.float32))  # warm up before first use
        return scorer

    @serve.batch(**DEFAULT_BATCH, max_concurrent_batches=CONCURRENT_BATCHES)
    async def score(self, items: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        # A batch may mix versions during a canary: one model call per version.
        out: list[np.ndarray | None] = [None] * len(items)
        by_model: dict[str, list[int]] = {}
        for i, (model_id, _) in enumerate(items):
            by_model.setdefault(model_id, []).append(i)
        loop = asyncio.get_running_loop()
        for model_id, idx in by_model.items():
            scorer = await self.get_model(model_id)
            parts = await loop.run_in_executor(self.model_thread, split_rows, scorer, [items[i][1] for i in idx])
            for i, res in zip(idx, parts):
                out[i] = res
        return out

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        return await self.score((serve.get_multiplexed_model_id(), rows))

    async def describe(self) -> dict:
        """The backend this replica loaded for the request's model and, for ONNX, the providers
        its session ended up with (benchmarks record it: ``auto`` and a CUDA fallback are
        decided inside the replica, not by the caller)."""
        scorer = await self.get_model(serve.get_multiplexed_model_id())
        return {"version": scorer.version, "backend": scorer.backend,
                "providers": list(getattr(scorer, "providers", []))}


class InferenceClient:
    """The region's inference deployment as its ingress calls it (``fleet.region.pricing``): one
    micro-batcher per model version, so concurrent requests share one handle call."""

    def __init__(self, handle):
        self.handle = handle  # DeploymentHandle of the region's Inference
        self.batchers: dict[str, MicroBatcher] = {}

    def score(self, model: str, rows: np.ndarray):
        """Click probabilities for ``rows`` from ``model`` (an awaitable, batched)."""
        b = self.batchers.get(model)
        if b is None:
            handle = self.handle.options(multiplexed_model_id=model)
            b = self.batchers[model] = MicroBatcher(lambda rows: handle.remote(rows))
        return b(rows)

    def call(self, model: str, rows: np.ndarray):
        """One call of its own (the warm-up that loads ``model`` on a replica)."""
        return self.handle.options(multiplexed_model_id=model).remote(rows)


def build_app(args: dict | None = None) -> serve.Application:
    """Standalone (benchmarks, tests); regions bind it inside their own app (region_app)."""
    args = args or {}
    return Inference.options(name="inference").bind(args)
