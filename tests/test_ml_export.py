"""The bid model's three exports agree with XGBoost to 1e-5 on probabilities.

The held-back rows are built to hit the places where tree compilers go wrong: NaNs (each node's
default branch), values exactly on a split threshold (XGBoost goes right: ``value < threshold``
is false) and one float32 step either side of it, and an intercept that is not 0.5.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import xgboost as xgb

from fleet.ml import export
from fleet.ml.tensorize import (_parse_base_score, base_margin, predict_numpy, tensorize,
                                tensorize_matrices)

N_FEATURES = 12
TOL = 1e-5


def _features(rng: np.random.Generator, n: int, n_features: int = N_FEATURES) -> np.ndarray:
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan  # ~10%: enough for default_left to be learned both ways
    return X


def _labels(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(X, nan=0.7)  # missingness carries signal, so NaNs don't all go one way
    logit = x[:, 0] + 0.8 * x[:, 1] * x[:, 2] - 0.6 * np.abs(x[:, 3]) + 0.5 * np.isnan(X[:, 4])
    return (rng.random(len(X)) < 1 / (1 + np.exp(-2 * logit))).astype(np.float32)


def _train(X: np.ndarray, y: np.ndarray, rounds: int, **params) -> xgb.Booster:
    base = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.3, "nthread": 2, "seed": 0}
    return xgb.train(base | params, xgb.DMatrix(X, label=y), num_boost_round=rounds)


def _thresholds(booster: xgb.Booster) -> dict[int, np.ndarray]:
    """Split thresholds per feature, read from the model JSON (float32, as XGBoost holds them)."""
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    out: dict[int, list[float]] = {}
    for t in trees:
        for nid, left in enumerate(t["left_children"]):
            if left != -1:
                out.setdefault(t["split_indices"][nid], []).append(t["split_conditions"][nid])
    return {f: np.unique(np.asarray(v, dtype=np.float32)) for f, v in out.items()}


def _adversarial_rows(booster: xgb.Booster, rng: np.random.Generator, n: int) -> np.ndarray:
    """Fresh rows; in three quarters of them, each feature is (with p=0.5) replaced by one of its
    split thresholds, exactly, one ulp below, or one ulp above. NaNs stay in the rest."""
    X = _features(rng, n)
    thresholds = _thresholds(booster)
    for block, direction in enumerate((None, -np.inf, np.inf)):
        rows = np.arange(block * n // 4, (block + 1) * n // 4)
        for f, th in thresholds.items():
            hit = rows[rng.random(len(rows)) < 0.5]
            planted = rng.choice(th, size=len(hit))
            if direction is not None:
                planted = np.nextafter(planted, np.float32(direction), dtype=np.float32)
            X[hit, f] = planted
    return X


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X = _features(rng, 20_000)
    return X, _labels(rng, X)


@pytest.fixture(scope="module")
def model(data):
    X, y = data
    return _train(X, y, rounds=60)


@pytest.fixture(scope="module")
def held_back(model):
    return _adversarial_rows(model, np.random.default_rng(11), 2_000)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bid_model")
    return out, export.export_all(model, N_FEATURES, out)


def test_held_back_rows_hit_thresholds_and_nans(model, held_back):
    thresholds = _thresholds(model)
    on_threshold = sum(np.isin(held_back[:, f], th).sum() for f, th in thresholds.items())
    assert on_threshold > 1_000
    assert 0.03 < np.isnan(held_back).mean() < 0.15
    trees = json.loads(model.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    tree_defaults = [d for t in trees
                     for d, lc in zip(t["default_left"], t["left_children"]) if lc != -1]
    assert 0 < sum(tree_defaults) < len(tree_defaults)  # NaNs learned to go both ways


def test_export_writes_three_formats_with_hashes(exported):
    out, manifest = exported
    files = {m["file"] for m in manifest.values()}
    assert files == {export.NATIVE, export.TREEENSEMBLE, export.TENSORIZED}
    for m in manifest.values():
        assert m["sha256"] == hashlib.sha256((out / m["file"]).read_bytes()).hexdigest()


def test_all_formats_agree_with_xgboost(model, exported, held_back):
    diffs = export.check_agreement(model, exported[0], held_back)
    assert set(diffs) == {"native", "treeensemble", "tensorized"}
    assert all(d <= TOL for d in diffs.values()), diffs


def test_numpy_reference_agrees(model, held_back):
    got = predict_numpy(tensorize_matrices(model), held_back)
    assert np.max(np.abs(got - model.inplace_predict(held_back))) <= TOL


def test_tensorized_graph_uses_only_default_domain_ops(exported):
    graph = onnx.load(exported[0] / export.TENSORIZED)
    onnx.checker.check_model(graph, full_check=True)
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    assert not any(node.op_type.startswith("TreeEnsemble") for node in graph.graph.node)
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["probability"]


def test_tensorized_runs_on_cpu_provider(exported, held_back):
    session = ort.InferenceSession(str(exported[0] / export.TENSORIZED),
                                   providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    (out,) = session.run(None, {"input": held_back})
    assert out.dtype == np.float32 and out.shape == (len(held_back),)


@pytest.mark.parametrize("batch", [1, 7, 4096])
def test_batch_sizes_agree(model, exported, batch):
    X = _adversarial_rows(model, np.random.default_rng(batch), batch)
    reference = model.inplace_predict(X)
    for name in (export.TENSORIZED, export.TREEENSEMBLE):
        got = export.predict_proba(export.load_session(exported[0] / name, prefer_cuda=False), X)
        assert got.shape == (batch,)
        assert np.max(np.abs(got - reference)) <= TOL, name


def test_empty_batch_returns_empty(exported):
    # Regression: a Transpose feeding the MatMul got fused by ORT into a FusedMatMul that
    # killed the process (SIGFPE) on N=0.
    empty = np.zeros((0, N_FEATURES), dtype=np.float32)
    for name in (export.TENSORIZED, export.TREEENSEMBLE):
        session = export.load_session(exported[0] / name, prefer_cuda=False)
        assert export.predict_proba(session, empty).shape == (0,)


def _leaf_counts(booster: xgb.Booster) -> list[int]:
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    return [len(t["left_children"]) for t in trees]


@pytest.mark.parametrize("case", ["all_single_leaf", "mixed", "constant_label"])
def test_single_leaf_trees_agree(case, tmp_path):
    rng = np.random.default_rng(3)
    X = _features(rng, 400)
    y = _labels(rng, X)
    if case == "all_single_leaf":  # no split can satisfy the child weight: every tree is a leaf
        booster = _train(X, y, rounds=10, min_child_weight=1e9)
    elif case == "mixed":  # a large gamma stops splitting once the easy gains are taken
        booster = _train(X, y, rounds=20, max_depth=3, gamma=3.0)
    else:  # constant label: XGBoost stores base_score 1 and clamps it to 1 - 1e-6
        booster = _train(X, np.ones_like(y), rounds=5)
    counts = _leaf_counts(booster)
    assert 1 in counts and (case != "mixed" or max(counts) > 1), counts
    export.export_all(booster, N_FEATURES, tmp_path)
    X_eval = _adversarial_rows(booster, rng, 500)
    diffs = export.check_agreement(booster, tmp_path, X_eval)
    assert all(d <= TOL for d in diffs.values()), diffs
    assert np.max(np.abs(predict_numpy(tensorize_matrices(booster), X_eval)
                         - booster.inplace_predict(X_eval))) <= TOL


def test_explicit_base_score_agrees(data, tmp_path):
    X, y = data
    booster = _train(X[:5_000], y[:5_000], rounds=20, base_score=0.2)
    stored = json.loads(booster.save_raw("json"))["learner"]["learner_model_param"]["base_score"]
    assert _parse_base_score(stored) == pytest.approx(0.2)
    export.export_all(booster, N_FEATURES, tmp_path)
    X_eval = _adversarial_rows(booster, np.random.default_rng(5), 1_000)
    diffs = export.check_agreement(booster, tmp_path, X_eval)
    assert all(d <= TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("base_score", [0.0, 1e-7, 0.2, 0.5, 0.999999, 1.0])
def test_intercept_matches_xgboost_margin(base_score):
    # No trees: the margin is the intercept alone. XGBoost clamps base_score to
    # [1e-6, 1 - 1e-6], so 0 and 1 give finite margins (about -13.8 and +13.7), not infinities.
    X = _features(np.random.default_rng(0), 50)
    booster = _train(X, np.zeros(50, dtype=np.float32), rounds=0, base_score=base_score)
    margin = booster.inplace_predict(X[:1], predict_type="margin")[0]
    assert abs(float(base_margin(booster)) - float(margin)) <= 1e-5
    assert float(tensorize_matrices(booster)["bias"]) == pytest.approx(float(margin), abs=1e-5)


@pytest.mark.parametrize("raw", ["[5E-1]", "5E-1", "0.5", 0.5, "[5.0E-1]"])
def test_base_score_forms(raw):
    assert _parse_base_score(raw) == 0.5


def test_rejects_other_objectives(data):
    X, y = data
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 2},
                        xgb.DMatrix(X[:500], label=y[:500]), num_boost_round=2)
    with pytest.raises(ValueError, match="binary:logistic"):
        tensorize(booster)


def test_load_session_falls_back_to_cpu_and_caps_threads(exported, held_back):
    # onnxruntime-gpu lists CUDA even where its libraries cannot load; the session then runs
    # on the CPU alone and load_session warns.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = export.load_session(exported[0] / export.TENSORIZED, prefer_cuda=True,
                                      intra_op_num_threads=1)
    providers = session.get_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert providers in (["CPUExecutionProvider"],
                         ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda_listed = "CUDAExecutionProvider" in ort.get_available_providers()
    fell_back = cuda_listed and providers == ["CPUExecutionProvider"]
    assert any("CUDA requested" in str(w.message) for w in caught) == fell_back
    assert session.get_session_options().intra_op_num_threads == 1
    assert export.predict_proba(session, held_back[:5]).shape == (5,)


def test_load_session_cpu_only_when_cuda_not_preferred(exported):
    session = export.load_session(exported[0] / export.TENSORIZED, prefer_cuda=False)
    assert session.get_providers() == ["CPUExecutionProvider"]
