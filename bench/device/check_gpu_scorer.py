"""The bid-price model on ONNX Runtime CUDA (backend auto) against the CPU scorer on 4,096
random rows, and the bare CUDA session's rows/s at batch 16, 256 and 4,096. Run from the repo."""
import time
import numpy as np
import onnxruntime as ort
print("ort", ort.__version__, ort.__file__, ort.get_available_providers(), ort.get_device())
from fleet.ml.features import N_FEATURES
from fleet.ml.scorer import cuda_usable, load_scorer
print("cuda_usable:", cuda_usable())
s = load_scorer("ctr/v1", "auto")
print("auto ->", s.backend, s.providers)
c = load_scorer("ctr/v1", "onnx-cpu")
X = np.random.default_rng(0).random((4096, N_FEATURES), dtype=np.float32)
print("max |cuda - cpu| on 4096 random rows:", float(np.max(np.abs(s.predict(X) - c.predict(X)))))
for n in (16, 256, 4096):
    x = np.ascontiguousarray(X[:n]); s.predict(x); t = time.perf_counter(); k = 0
    while time.perf_counter() - t < 0.5: s.predict(x); k += 1
    print(f"bare {s.backend} batch {n}: {k * n / (time.perf_counter() - t):,.0f} rows/s")
