"""Write the bid-price model in its three serving formats, and prove they agree with XGBoost.

* ``model.ubj``: XGBoost's own format, for ``device="cuda"`` prediction in XGBoost itself.
* ``model_treeensemble.onnx``: onnxmltools' ``ai.onnx.ml`` TreeEnsembleClassifier. ONNX Runtime
  runs that op on the CPU only; it is the conventional export and a second opinion.
* ``model_tensorized.onnx``: our GEMM compilation (:mod:`fleet.ml.tensorize`), default-domain
  ops only, so ONNX Runtime's CUDA provider runs the whole graph.

A format is only servable once ``check_agreement`` shows it within 1e-5 of
``booster.inplace_predict`` on probabilities: the three formats differ in how they compare
thresholds, route NaNs and add base_score, and each of those has bitten someone.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import xgboost as xgb
from onnx import helper

from fleet.ml.tensorize import INPUT, base_margin, tensorize

NATIVE = "model.ubj"
TREEENSEMBLE = "model_treeensemble.onnx"
TENSORIZED = "model_tensorized.onnx"
# onnxmltools refuses a default-domain opset above 15; its TreeEnsembleClassifier lands in
# ai.onnx.ml version 1 either way.
TREEENSEMBLE_OPSET = 15
# TreeEnsembleClassifier outputs (label [N] int64, probabilities [N, 2]); column 1 is P(y=1),
# the number XGBoost's predict returns.
TREEENSEMBLE_PROBA_OUTPUT = 1
POSITIVE_CLASS = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _set_intercept(model: onnx.ModelProto, margin: float) -> None:
    """Overwrite the TreeEnsembleClassifier's base_values with XGBoost's own margin intercept.

    onnxmltools gets it wrong in two cases: when the first tree is a single leaf of value 0
    (a tree that cannot split, after boost_from_average has zeroed the gradient sum) it takes
    base_score, a probability, as the margin; and it does not clamp base_score to
    [1e-6, 1 - 1e-6], so a constant-label model gets an infinite intercept.
    """
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    kept = [a for a in node.attribute if a.name != "base_values"]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute("base_values", [float(margin)])])


def _treeensemble(booster: xgb.Booster, n_features: int) -> bytes:
    # Imported here: onnxmltools drags in its converter registry, which serving never needs.
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = onnxmltools.convert_xgboost(
        booster, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        target_opset=TREEENSEMBLE_OPSET)
    _set_intercept(model, base_margin(booster))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_all(booster: xgb.Booster, n_features: int,
               out_dir: str | Path) -> dict[str, dict[str, str]]:
    """Write the three formats to ``out_dir``; returns {format: {"file": name, "sha256": hex}}.

    The booster must come from numpy training data (features named f0..fN-1 or unnamed):
    onnxmltools maps splits to input columns by those names.
    """
    if booster.num_features() != n_features:
        raise ValueError(f"booster has {booster.num_features()} features, not {n_features}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(out / NATIVE)  # the .ubj suffix selects UBJSON
    (out / TREEENSEMBLE).write_bytes(_treeensemble(booster, n_features))
    (out / TENSORIZED).write_bytes(tensorize(booster).SerializeToString())
    return {fmt: {"file": name, "sha256": _sha256(out / name)}
            for fmt, name in (("native", NATIVE), ("treeensemble", TREEENSEMBLE),
                              ("tensorized", TENSORIZED))}


def load_session(path: str | Path, prefer_cuda: bool,
                 intra_op_num_threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on CUDA when asked for and available, else on the CPU.

    The CPU provider is always listed last, so ops without a CUDA kernel (TreeEnsemble*) still
    run. ``intra_op_num_threads`` caps the CPU threads: a replica must not take every core.
    """
    providers = ["CPUExecutionProvider"]
    if prefer_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = intra_op_num_threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    if providers[0] not in session.get_providers():
        # onnxruntime-gpu lists CUDA whenever it was built with it, then silently falls back
        # when libcudart/cuDNN are missing: say so, a CPU replica has a different latency.
        warnings.warn(f"CUDA requested for {path} but unusable here; running on the CPU",
                      RuntimeWarning, stacklevel=2)
    return session


def proba_output(session: ort.InferenceSession) -> str:
    """The name of the output holding P(y=1): the tensorized graph's only one, or the
    TreeEnsembleClassifier's probabilities (its label output is never fetched)."""
    outputs = session.get_outputs()
    return outputs[0 if len(outputs) == 1 else TREEENSEMBLE_PROBA_OUTPUT].name


def predict_proba(session: ort.InferenceSession, X: np.ndarray, fetch: list[str] | None = None) -> np.ndarray:
    """P(y=1) [N] from either ONNX format.

    The tensorized graph's output is already [N]; the TreeEnsembleClassifier's probabilities are
    [N, 2] and column 1 is the positive class. ``fetch``: ``[proba_output(session)]``, kept by a
    caller that predicts on every request (the names are looked up once, not per call).
    """
    if X.dtype != np.float32 or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=np.float32)
    out = session.run(fetch or [proba_output(session)], {INPUT: X})[0]
    return out if out.ndim == 1 else out[:, POSITIVE_CLASS]


def check_agreement(booster: xgb.Booster, out_dir: str | Path, X: np.ndarray) -> dict[str, float]:
    """Max |probability difference| of each exported format against ``booster.inplace_predict``.

    Runs on the CPU provider on purpose: this is the correctness gate, it must not depend on the
    machine having a GPU, and CPU kernels are deterministic.
    """
    out = Path(out_dir)
    X = np.ascontiguousarray(X, dtype=np.float32)
    reference = booster.inplace_predict(X)
    native = xgb.Booster(model_file=str(out / NATIVE)).inplace_predict(X)
    preds = {"native": native}
    for fmt, name in (("treeensemble", TREEENSEMBLE), ("tensorized", TENSORIZED)):
        preds[fmt] = predict_proba(load_session(out / name, prefer_cuda=False), X)
    return {fmt: float(np.max(np.abs(pred - reference), initial=0.0))
            for fmt, pred in preds.items()}
