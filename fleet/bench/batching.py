"""Batched inference through Serve against a bare ONNX Runtime session, same rows per model call.

Many concurrent callers each send the candidate rows of one bid request (16 rows); the inference
deployment's ``@serve.batch`` gathers up to ``max_batch_size`` callers into one model call. The
reference, measured in the same run on the same machine, is a bare ONNX Runtime session of the
same backend scoring the same rows in calls of the same size. The ratio is what the deployment
(routing, batching, serialisation) costs on top of the model itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

ROWS_PER_CALLER = 16


def bare_rows_per_s(scorer, X: np.ndarray, rows_per_call: int, seconds: float) -> float:
    chunk = np.ascontiguousarray(np.resize(X, (rows_per_call, X.shape[1])), dtype=np.float32)
    scorer.predict(chunk)
    n, end = 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        scorer.predict(chunk)
        n += rows_per_call
    return n / (time.perf_counter() - t0)


async def served_rows_per_s(handle, X: np.ndarray, callers: int, seconds: float,
                            micro: bool = False, in_flight: int = 1) -> tuple[float, float]:
    """(rows/s, nominal rows per model call) with ``callers`` concurrent request loops; with
    ``micro`` the callers share handle calls through the ingress's micro-batcher, whose calls
    carry ``callers / in_flight`` callers' rows, so ``in_flight`` calls are under way at once (as
    when several ingress replicas, or one busy one, feed the deployment)."""
    parts = [np.ascontiguousarray(np.resize(X[i:], (ROWS_PER_CALLER, X.shape[1])), dtype=np.float32)
             for i in range(callers)]
    done = 0
    stop = time.perf_counter() + seconds

    call = handle.remote
    if micro:
        from fleet.serve.microbatch import MicroBatcher

        call = MicroBatcher(lambda rows: handle.remote(rows), max_rows=ROWS_PER_CALLER * callers // in_flight)

    async def loop(part):
        nonlocal done
        while time.perf_counter() < stop:
            await call(part)
            done += len(part)

    await asyncio.gather(*(handle.remote(p) for p in parts[:4]))  # warm-up
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(p) for p in parts))
    return done / (time.perf_counter() - t0), float(ROWS_PER_CALLER * callers // (in_flight if micro else 1))


def run_batching(model: str, out: Path, port: int, seconds: float = 4.0, log=print,
                 backend: str = "onnx-cpu", num_gpus: float = 0.0) -> dict:
    """Served against bare rows/s per batching setting; writes and returns the result document.

    ``backend`` is what the deployment is bound with and what the bare session loads (the same
    ``load_scorer`` rule, so ``auto`` resolves alike on one machine); ``num_gpus`` is the
    replica's fraction of a GPU, as a GPU region gives its inference deployment. The defaults
    measure the CPU serving path; ``backend="onnx-cuda", num_gpus=0.25`` measures the GPU one.
    The replica's own account of what it loaded is recorded, since the choice (``auto``, a CUDA
    fallback) is made inside it.
    """
    from fleet.runtime.local import ray_env

    os.environ.update(ray_env())  # before Ray is imported: it reads these then
    import ray
    from ray import serve

    from fleet.bench.inference import prepare
    from fleet.ml.scorer import load_scorer
    from fleet.serve.inference_app import Inference

    npz = prepare(model, out.with_suffix(".npz"))
    X = np.load(npz)["X"].astype(np.float32)
    npz.unlink()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        bare = load_scorer(model, backend, threads=1)
        log(f"  bare session: {bare.backend} {getattr(bare, 'providers', [])}")
        replica = None
        for max_batch, micro, callers, in_flight in (
                (1, False, 1, 1), (16, False, 16, 1), (64, False, 64, 1), (256, False, 256, 1),
                (1, True, 256, 1), (1, True, 512, 2), (16, True, 256, 1), (1, True, 1024, 1), (1, True, 2048, 2)):
            app = Inference.options(name="inference", max_ongoing_requests=max(512, callers),
                                    ray_actor_options={"num_cpus": 0, "num_gpus": num_gpus},
                                    user_config={"max_batch_size": max_batch, "batch_wait_timeout_s": 0.002}
                                    ).bind({"backend": backend, "threads": 1})
            serve.run(app, name="bench-inference", route_prefix=None)

            async def measure():
                h = serve.get_app_handle("bench-inference").options(multiplexed_model_id=model)
                try:
                    loaded = await h.describe.remote()
                    return loaded, await served_rows_per_s(h, X, callers=callers, seconds=seconds, micro=micro,
                                                           in_flight=in_flight)
                finally:
                    from ray.serve.context import _get_global_client

                    await _get_global_client().shutdown_cached_handles_async()

            loaded, (served, rows_per_call) = asyncio.run(measure())
            if loaded != replica:
                log(f"  replica loaded: {loaded['backend']} {loaded['providers']}")
                replica = loaded
            ref = bare_rows_per_s(bare, X, int(rows_per_call), seconds)
            row = {"max_batch_size": max_batch, "caller_micro_batching": micro, "callers": callers,
                   "calls_in_flight": in_flight,
                   "rows_per_call": int(rows_per_call),
                   "served_rows_per_s": round(served, 1), "bare_rows_per_s": round(ref, 1),
                   "ratio": round(served / ref, 3)}
            log(f"  batch {max_batch:>4}{' +micro' if micro else '       '} x {ROWS_PER_CALLER} rows, {in_flight} in flight: served {served:>10,.0f} rows/s  "
                f"bare ORT {ref:>10,.0f} rows/s  ratio {served / ref:.2f}")
            rows.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()
    doc = {"benchmark": "batching", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count()}, "model": model, "backend": f"{backend} (1 thread)",
           "num_gpus": num_gpus, "replica": replica, "bare": {"backend": bare.backend,
                                                              "providers": getattr(bare, "providers", [])},
           "method": "concurrent callers of 16 rows each through a handle; bare ORT at the same rows per call",
           "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc
