"""Compile an XGBoost binary:logistic booster into plain tensor algebra (Hummingbird's GEMM form).

Why our own compiler: ONNX Runtime's CUDA provider has no kernel for the ``ai.onnx.ml``
TreeEnsemble ops, so a converted model falls back to the CPU for its one real node. Written as
Gather / Less / MatMul / Equal over *all* trees at once, the whole model is a handful of
standard ops that run anywhere, and the same matrices feed a PyTorch or CuPy backend.

The matrices. Trees that are a single leaf fold into ``bias``; the other T trees are padded to
I internal nodes and L leaves each, so one batched matmul covers all of them:

* ``feature_index`` [T*I] int64 and the one-hot ``A`` [F, T*I]: which feature each node tests.
* ``B`` [T*I] float32: thresholds. A sample goes left iff ``value < B`` (float32, as XGBoost).
* ``default_left`` [T*I] bool: where a missing (NaN) value goes.
* ``C`` [T, I, L] float32: +1 if the leaf is under the node's left child, -1 under its right.
* ``D`` [T, L] float32: left turns on the path to each leaf (-1 for padding, never chosen);
  ``(go_left @ C) == D`` picks exactly one leaf per tree.
* ``E`` [T, L] float32: leaf values (already scaled by the learning rate).
* ``bias`` float32: logit(base_score) plus the values of the single-leaf trees.

The ONNX graph evaluates the same matrices batch-last (C transposed, one [L, I] @ [I, N] per
tree); ``predict_numpy`` is the batch-first reference.

Traps this module exists to get right: features are *gathered* (``x @ A`` would let one NaN
poison every node, and a TF32 matmul would round the feature values); the leaf sum is a masked
ReduceSum, not a matmul, for the same TF32 reason; base_score is a probability in the model
file and joins the margin as its logit, before the sigmoid.

Per-tree blocks, not one dense [all nodes x all leaves] C: that one grows with the square of the
model (200 trees of depth 8 would be 10 GB); the blocks grow linearly. The batch still costs
O(N x T x L) memory, right for the bid model's few hundred trees of depth <= 8, wrong for forests
of very deep trees.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import xgboost as xgb
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17; newer ONNX writes an IR older runtimes refuse
INPUT = "input"
OUTPUT = "probability"
RT_EPS = 1e-6  # XGBoost's kRtEps, the clamp on a probability-space intercept


def _parse_base_score(raw: Any) -> float:
    """base_score as stored: a float, "5E-1", or (XGBoost 3, vector intercept) "[5E-1]"."""
    if isinstance(raw, (int, float)):
        return float(raw)
    values = [v for v in str(raw).strip().strip("[]").split(",") if v.strip()]
    if len(values) != 1:
        raise ValueError(f"expected one intercept for binary:logistic, got {raw!r}")
    return float(values[0])


def _logit(p: float) -> np.float32:
    """XGBoost's ProbToMargin for the logistic loss, in float32 as it computes it.

    XGBoost clamps the intercept to [1e-6, 1 - 1e-6] first: a constant-label training set
    stores base_score 0 or 1, and predicts margin -13.8155 / +13.7452, not -inf / +inf.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"base_score must be in [0, 1] for binary:logistic, got {p}")
    p32 = np.clip(np.float32(p), np.float32(RT_EPS), np.float32(1.0 - RT_EPS))
    return np.float32(-np.log(np.float32(1.0) / p32 - np.float32(1.0)))


def _load_model(booster: xgb.Booster) -> tuple[list[dict], float, int]:
    """The trees, base_score (probability) and feature count, from the raw JSON model."""
    learner = json.loads(booster.save_raw("json"))["learner"]
    objective = learner.get("objective", {}).get("name")
    if objective != "binary:logistic":
        raise ValueError(f"only binary:logistic is supported, got {objective!r}")
    gb = learner["gradient_booster"]
    if gb.get("name", "gbtree") != "gbtree":  # dart weights trees, gblinear has none
        raise ValueError(f"only gbtree boosters are supported, got {gb.get('name')!r}")
    params = learner["learner_model_param"]
    if int(params.get("num_target", 1)) != 1 or int(params.get("num_class", 0)) > 1:
        raise ValueError("only single-target models are supported")
    return gb["model"]["trees"], _parse_base_score(params["base_score"]), int(params["num_feature"])


def base_margin(booster: xgb.Booster) -> np.float32:
    """The intercept in margin space, as XGBoost adds it before the trees: logit(base_score)."""
    return _logit(_load_model(booster)[1])


LeafPath = list[tuple[int, bool]]  # (internal node position in its tree, went left)


def _walk(tree: dict) -> tuple[list[tuple[int, float, bool]], list[tuple[float, LeafPath]]]:
    """One tree's internal nodes (feature, threshold, default_left) and leaves (value, path).

    A path lists (internal node position, went left). Walking from the root skips deleted nodes.
    """
    if any(int(t) != 0 for t in tree.get("split_type", [])):
        raise ValueError("categorical splits are not supported")
    left, right = tree["left_children"], tree["right_children"]
    cond, dflt, index = tree["split_conditions"], tree["default_left"], tree["split_indices"]
    internal: list[tuple[int, float, bool]] = []
    leaves: list[tuple[float, LeafPath]] = []
    stack: list[tuple[int, LeafPath]] = [(0, [])]
    while stack:  # iterative: lossguide trees can be deeper than the recursion limit
        nid, path = stack.pop()
        if left[nid] == -1:
            leaves.append((cond[nid], path))  # a leaf's split_condition is its eta-scaled value
            continue
        pos = len(internal)
        internal.append((int(index[nid]), cond[nid], bool(dflt[nid])))
        stack.append((right[nid], path + [(pos, False)]))
        stack.append((left[nid], path + [(pos, True)]))
    return internal, leaves


def tensorize_matrices(booster: xgb.Booster) -> dict[str, np.ndarray]:
    """The GEMM matrices of every tree of ``booster`` (see the module docstring).

    Single-leaf trees are folded into ``bias``; the other T trees are padded to I internal
    nodes and L leaves each (padding nodes have an all-zero row of C, padding leaves D = -1).
    """
    trees, base_score, n_features = _load_model(booster)
    bias = _logit(base_score)
    walked = []
    for tree in trees:
        internal, leaves = _walk(tree)
        if internal:
            walked.append((internal, leaves))
        else:  # a single-leaf tree adds the same value to every row
            bias = np.float32(bias + np.float32(leaves[0][0]))
    T = len(walked)
    I = max((len(w[0]) for w in walked), default=0)
    L = max((len(w[1]) for w in walked), default=0)
    feature_index = np.zeros((T, I), dtype=np.int64)
    B = np.zeros((T, I), dtype=np.float32)
    default_left = np.zeros((T, I), dtype=bool)
    C = np.zeros((T, I, L), dtype=np.float32)
    D = np.full((T, L), -1.0, dtype=np.float32)
    E = np.zeros((T, L), dtype=np.float32)
    for t, (internal, leaves) in enumerate(walked):
        for i, (feature, threshold, dleft) in enumerate(internal):
            feature_index[t, i], B[t, i], default_left[t, i] = feature, threshold, dleft
        for j, (value, path) in enumerate(leaves):
            E[t, j] = value
            D[t, j] = sum(went_left for _, went_left in path)
            for i, went_left in path:
                C[t, i, j] = 1.0 if went_left else -1.0
    if (feature_index >= n_features).any():
        raise ValueError("a split uses a feature index beyond num_feature")
    feature_index = feature_index.reshape(-1)
    A = np.zeros((n_features, T * I), dtype=np.float32)
    A[feature_index, np.arange(T * I)] = 1.0
    return {
        "feature_index": feature_index,  # [T*I]
        "A": A,  # [F, T*I]; use only on NaN-free input with a true-fp32 (no TF32) matmul
        "B": B.reshape(-1),  # [T*I]
        "default_left": default_left.reshape(-1),  # [T*I]
        "C": C,  # [T, I, L]
        "D": D,  # [T, L]
        "E": E,  # [T, L]
        "bias": np.asarray(bias, dtype=np.float32),
        "n_features": np.asarray(n_features, dtype=np.int64),
    }


def predict_numpy(matrices: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Reference evaluation of the matrices: the same steps as the ONNX graph, in numpy."""
    X = np.asarray(X, dtype=np.float32)
    m = matrices
    margin = np.full(X.shape[0], m["bias"], dtype=np.float32)
    T, I, _ = m["C"].shape
    if T:
        values = X[:, m["feature_index"]]  # [N, T*I]
        with np.errstate(invalid="ignore"):  # NaN < threshold is False, as wanted
            go_left = (values < m["B"]) | (np.isnan(values) & m["default_left"])
        go_left = go_left.astype(np.float32).reshape(-1, T, I).transpose(1, 0, 2)  # [T, N, I]
        chosen = (go_left @ m["C"]) == m["D"][:, None, :]  # [T, N, L], one leaf per tree
        leaf = np.where(chosen, m["E"][:, None, :], np.float32(0))
        margin = margin + leaf.sum(axis=(0, 2), dtype=np.float32)
    return (np.float32(1) / (np.float32(1) + np.exp(-margin))).astype(np.float32)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name=name)


def tensorize(booster: xgb.Booster) -> onnx.ModelProto:
    """``booster`` as ONNX with default-domain ops only: input [N, F] -> probability [N]."""
    m = tensorize_matrices(booster)
    n_features = int(m["n_features"])
    T, I, L = m["C"].shape
    inits = [_const("bias", m["bias"])]
    if T:
        # Batch-last layout, [T, *, N]: features gathered from x^T, then one [L, I] @ [I, N]
        # GEMM per tree. Batch-first needs a Transpose before the MatMul, which ORT's extended
        # optimizer fuses into a FusedMatMul that dies with SIGFPE on an empty batch.
        inits += [
            _const("feature_index", m["feature_index"].reshape(T, I)),
            _const("B", m["B"].reshape(T, I, 1)),
            _const("default_left", m["default_left"].reshape(T, I, 1)),
            _const("C_t", np.ascontiguousarray(m["C"].transpose(0, 2, 1))),  # [T, L, I]
            _const("D", m["D"].reshape(T, L, 1)),
            _const("E", m["E"].reshape(T, L, 1)),
            _const("zero", np.zeros((), dtype=np.float32)),
            _const("tree_and_leaf_axes", np.asarray([0, 1], dtype=np.int64)),
        ]
        nodes = [
            helper.make_node("Transpose", [INPUT], ["input_t"], perm=[1, 0]),  # [F, N]
            helper.make_node("Gather", ["input_t", "feature_index"], ["values"],  # [T, I, N]
                             axis=0),
            # NaN < threshold is False, so left = below or (missing and default_left).
            helper.make_node("Less", ["values", "B"], ["below"]),
            helper.make_node("IsNaN", ["values"], ["missing"]),
            helper.make_node("And", ["missing", "default_left"], ["missing_left"]),
            helper.make_node("Or", ["below", "missing_left"], ["go_left"]),
            helper.make_node("Cast", ["go_left"], ["go_left_f"], to=TensorProto.FLOAT),
            # Small integers: exact even where the GPU matmul runs in TF32 or fp16.
            helper.make_node("MatMul", ["C_t", "go_left_f"], ["path_score"]),  # [T, L, N]
            helper.make_node("Equal", ["path_score", "D"], ["chosen"]),
            helper.make_node("Where", ["chosen", "E", "zero"], ["leaf_values"]),
            helper.make_node("ReduceSum", ["leaf_values", "tree_and_leaf_axes"], ["tree_sum"],
                             keepdims=0),
            helper.make_node("Add", ["tree_sum", "bias"], ["margin"]),
        ]
    else:  # every tree is a single leaf: the margin is the bias, broadcast to the batch
        inits += [_const("start0", np.asarray([0], dtype=np.int64)),
                  _const("end1", np.asarray([1], dtype=np.int64))]
        nodes = [
            helper.make_node("Shape", [INPUT], ["in_shape"]),
            helper.make_node("Slice", ["in_shape", "start0", "end1"], ["batch"]),
            helper.make_node("Expand", ["bias", "batch"], ["margin"]),
        ]
    nodes.append(helper.make_node("Sigmoid", ["margin"], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "xgboost_gemm",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fleet.ml.tensorize")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
