import importlib
mods = ["fleet.cli","fleet.bench.cli","fleet.bench.capacity","fleet.serve.region_app","fleet.serve.noop_app","fleet.serve.cache_actor",
        "fleet.serve.ledger_actor","fleet.cache.client","fleet.cache.wire","fleet.obs.metrics","fleet.obs.tracing","fleet.ml.export","fleet.ml.scorer",
        "fleet.runtime.local","fleet.ledger.emitter","fleet.pipeline.bidder","httpx","redis","msgspec","ray","ray.serve","onnxruntime","xgboost"]
bad=[]
for m in mods:
    try: importlib.import_module(m)
    except BaseException as e: bad.append(m); print("FAIL", m, type(e).__name__, e)
print("BAD", bad)
