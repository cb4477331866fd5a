"""Inference throughput per backend and batch size: the same trees, every way the fleet can run them.

``prepare`` (here, with XGBoost) writes one ``.npz``: the tensorized matrices, 4,096 real feature
rows drawn from the market, and XGBoost's own predictions for them. ``run`` needs only numpy
plus whichever runtimes the machine has, so the same file and command measure a CPU box and a
GPU machine:

* ``ort-cpu-treeensemble``: ONNX Runtime's CPU tree-ensemble operator (the CPU serving path);
* ``ort-cpu-tensorized`` / ``ort-cuda-tensorized``: our standard-op graph on ORT's CPU / CUDA
  provider (CUDA only where onnxruntime-gpu and its CUDA libraries load);
* ``torch-cuda-tensorized``: the same matrices evaluated with PyTorch on the GPU (where ORT's
  CUDA provider cannot be installed, this is the tensorized path's GPU figure);
* ``xgboost-cpu`` / ``xgboost-cuda``: XGBoost's own predictor.

Each result: rows/s and p50/p99 milliseconds per batch, and max |difference| from XGBoost.

    python -m fleet.bench.inference prepare --model ctr/v1 --out bench/inference-ctr-v1.npz
    python -m fleet.bench.inference run --npz ... --model-dir models/ctr/v1 --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 16, 256, 4096)


def prepare(model: str, out: Path, rows: int = 4096) -> Path:
    import xgboost as xgb

    from fleet.ml.scorer import model_dir
    from fleet.ml.tensorize import tensorize_matrices
    from fleet.ml.train import make_dataset

    d = model_dir(model)
    booster = xgb.Booster(model_file=str(d / "model.ubj"))
    X, _, _ = make_dataset(rows, seed=99, log=lambda *_: None)
    m = tensorize_matrices(booster)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, X=X, reference=booster.inplace_predict(X),
                        **{f"m_{k}": np.asarray(v) for k, v in m.items()})
    return out


def _time(fn, X: np.ndarray, batch: int, seconds: float) -> dict:
    reps = max(1, 4096 // batch)
    xs = [np.ascontiguousarray(np.resize(X, (batch, X.shape[1]))[:batch]) for _ in range(1)]
    for _ in range(3):
        fn(xs[0])  # warm-up (CUDA context, allocator, kernels)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(xs[0])
            times.append(time.perf_counter() - t0)
    times_ms = np.array(times) * 1000
    return {"batch": batch, "calls": len(times), "rows_per_s": round(batch / float(np.mean(times_ms) / 1000), 1),
            "p50_ms": round(float(np.percentile(times_ms, 50)), 4),
            "p99_ms": round(float(np.percentile(times_ms, 99)), 4)}


def _backends(npz, model_dir: Path, threads: int) -> dict:
    out = {}
    try:
        import onnxruntime as ort

        def session(name, providers):
            o = ort.SessionOptions()
            o.intra_op_num_threads = threads
            s = ort.InferenceSession(str(model_dir / name), sess_options=o, providers=providers)
            return s if s.get_providers()[0] == providers[0] else None

        te = session("model_treeensemble.onnx", ["CPUExecutionProvider"])
        out["ort-cpu-treeensemble"] = lambda X: te.run(None, {"input": X})[1][:, 1]
        tc = session("model_tensorized.onnx", ["CPUExecutionProvider"])
        out["ort-cpu-tensorized"] = lambda X: tc.run(None, {"input": X})[0]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            try:
                tg = session("model_tensorized.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
                if tg is not None:
                    out["ort-cuda-tensorized"] = lambda X: tg.run(None, {"input": X})[0]
            except Exception as exc:  # noqa: BLE001 - report and go on
                print(f"ort cuda unavailable: {exc}")
    except ImportError:
        pass
    try:
        import xgboost as xgb

        for device in ("cpu", "cuda"):
            b = xgb.Booster(model_file=str(model_dir / "model.ubj"))
            b.set_param({"device": device, "nthread": threads})
            try:
                b.inplace_predict(np.asarray(npz["X"][:2]))
                if device == "cuda":
                    import cupy  # inputs on the device: the fair GPU figure includes the copy

                    out["xgboost-cuda"] = lambda X, b=b, cp=cupy: cp.asnumpy(b.inplace_predict(cp.asarray(X)))
                else:
                    out["xgboost-cpu"] = lambda X, b=b: b.inplace_predict(X)
            except Exception as exc:  # noqa: BLE001
                print(f"xgboost {device} unavailable: {exc}")
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            out["torch-cuda-tensorized"] = _torch_tensorized(npz, torch)
    except ImportError:
        pass
    return out


def _torch_tensorized(npz, torch):
    """The GEMM-compiled trees on the GPU: the same steps as the ONNX graph, input copied in
    and probabilities copied out per call (what a serving replica pays)."""
    dev = torch.device("cuda")
    fi = torch.as_tensor(npz["m_feature_index"], device=dev)
    B = torch.as_tensor(npz["m_B"], device=dev)
    DL = torch.as_tensor(npz["m_default_left"], device=dev)
    C = torch.as_tensor(npz["m_C"], device=dev)  # [T, I, L]
    D = torch.as_tensor(npz["m_D"], device=dev)  # [T, L]
    E = torch.as_tensor(npz["m_E"], device=dev)  # [T, L]
    bias = float(npz["m_bias"])
    T, I, L = C.shape
    torch.backends.cuda.matmul.allow_tf32 = False  # the path counts must stay exact

    def predict(X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(X).to(dev, non_blocking=True)
        v = x[:, fi]
        left = (v < B) | (torch.isnan(v) & DL)
        left = left.to(torch.float32).view(-1, T, I).transpose(0, 1)  # [T, N, I]
        chosen = torch.bmm(left, C) == D[:, None, :]  # [T, N, L]
        margin = torch.where(chosen, E[:, None, :], torch.zeros((), device=dev)).sum(dim=(0, 2)) + bias
        return torch.sigmoid(margin).cpu().numpy()

    return predict


def run(npz_path: Path, model_dir: Path, out: Path, seconds: float = 2.0, threads: int = 1,
        batches=BATCHES, log=print) -> dict:
    npz = np.load(npz_path)
    X, ref = npz["X"].astype(np.float32), npz["reference"]
    results = {}
    for name, fn in _backends(npz, model_dir, threads).items():
        diff = float(np.max(np.abs(np.asarray(fn(X)) - ref)))
        rows = [_time(fn, X, b, seconds) for b in batches]
        results[name] = {"max_abs_diff_vs_xgboost": diff, "batches": rows}
        log(f"{name:<24} max|diff| {diff:.2e}  " + "  ".join(
            f"b{r['batch']}: {r['rows_per_s']:>12,.0f} rows/s p99 {r['p99_ms']:.3f} ms" for r in rows))
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    doc = {"benchmark": "inference", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "gpu": gpu, "python": platform.python_version()},
           "threads": threads, "rows": int(len(X)), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--model", default="ctr/v1")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--npz", type=Path, required=True)
    r.add_argument("--model-dir", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seconds", type=float, default=2.0)
    r.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "prepare":
        print(prepare(a.model, a.out))
    else:
        run(a.npz, a.model_dir, a.out, a.seconds, a.threads)


if __name__ == "__main__":
    main()
