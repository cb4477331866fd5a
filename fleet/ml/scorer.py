"""The model runtime behind pricing: ``load`` a version directory, ``predict`` rows.

One small interface (MLServer's load/predict), one backend per way of running the same trees:

* ``onnx-cpu``: ONNX Runtime's CPU tree-ensemble operator, one thread. Tens of microseconds
  for a handful of rows, so CPU regions score in-process, without a hop.
* ``onnx-cuda``: the tensorized graph on ONNX Runtime's CUDA provider (large batches on a GPU).
* ``xgboost-cpu``, ``xgboost-cuda``: XGBoost's own predictor (``device="cuda"`` on a GPU).

Loading checks every artifact's sha256 against ``manifest.json`` before the first prediction:
a replica never prices with a file that is not the version it claims.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from fleet.config import resolve
from fleet.ml.features import FEATURES, N_FEATURES


class ModelError(Exception):
    pass


def model_dir(spec: str) -> Path:
    """``name/version`` (under models/) or a path."""
    p = Path(spec)
    return resolve(p if p.is_absolute() or str(p).startswith("models/") else Path("models") / p)


class Scorer:
    backend = "base"

    def __init__(self, directory: Path):
        self.dir = directory
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.version = f"{self.manifest['name']}/{self.manifest['version']}"
        if tuple(self.manifest["features"]) != FEATURES:
            raise ModelError(f"{self.version} was trained on other features than this code builds")
        for fmt, art in self.manifest["artifacts"].items():
            digest = hashlib.sha256((directory / art["file"]).read_bytes()).hexdigest()
            if digest != art["sha256"]:
                raise ModelError(f"{self.version}: {art['file']} does not match its manifest hash")

    def predict(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxScorer(Scorer):
    def __init__(self, directory: Path, *, artifact: str, cuda: bool, threads: int = 1):
        super().__init__(directory)
        from fleet.ml import export

        self.backend = "onnx-cuda" if cuda else "onnx-cpu"
        self._session = export.load_session(directory / artifact, prefer_cuda=cuda,
                                            intra_op_num_threads=threads)
        # What the session really runs on: CUDA falls back to the CPU where it cannot load.
        self.providers: list[str] = self._session.get_providers()
        self._predict = export.predict_proba
        self._fetch = [export.proba_output(self._session)]

    def predict(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != N_FEATURES:
            raise ModelError(f"expected [N, {N_FEATURES}] rows, got {X.shape}")
        return self._predict(self._session, X, self._fetch)


class XGBoostScorer(Scorer):
    def __init__(self, directory: Path, *, device: str = "cpu", threads: int = 1):
        super().__init__(directory)
        import xgboost as xgb

        from fleet.ml.export import NATIVE

        self.backend = f"xgboost-{device}"
        self._booster = xgb.Booster(model_file=str(directory / NATIVE))
        self._booster.set_param({"device": device, "nthread": threads})

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._booster.inplace_predict(X)


def cuda_usable() -> bool:
    """True only when ONNX Runtime can really create a CUDA session (not just lists it)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        import ctypes

        ctypes.CDLL("libcublasLt.so.13")
        ctypes.CDLL("libcudart.so.13")
    except OSError:
        return False
    return True


def load_scorer(spec: str, backend: str = "auto", threads: int = 1) -> Scorer:
    from fleet.ml.export import TENSORIZED, TREEENSEMBLE

    directory = model_dir(spec)
    if backend == "auto":
        backend = "onnx-cuda" if cuda_usable() else "onnx-cpu"
    if backend == "onnx-cpu":
        return OnnxScorer(directory, artifact=TREEENSEMBLE, cuda=False, threads=threads)
    if backend == "onnx-cuda":
        return OnnxScorer(directory, artifact=TENSORIZED, cuda=True, threads=threads)
    if backend.startswith("xgboost"):
        return XGBoostScorer(directory, device="cuda" if backend.endswith("cuda") else "cpu", threads=threads)
    raise ModelError(f"unknown backend {backend!r}")
