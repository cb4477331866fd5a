"""Train a click model on the simulator's ground-truth market, evaluate it, export it by version.

Data: market opportunities turned into OpenRTB requests and decoded exactly as the bidder sees
them; for each, one campaign drawn uniformly from those the fleet's own targeting admits (an
exploration log: no selection bias from a pricing policy); the label is a click drawn from the
true click probability, which is also kept to measure calibration against the truth.

Output: ``models/<name>/<version>/`` with the three serving formats, ``manifest.json`` (version,
feature list and order, metrics, artifact hashes, training parameters) and ``report.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time

import msgspec
import numpy as np
import xgboost as xgb

from fleet.campaigns.catalog import load_catalog
from fleet.config import REPO_ROOT, load_regions
from fleet.ml import export
from fleet.ml.features import FEATURES, N_FEATURES, FeatureBuilder, matrix
from fleet.openrtb.model import BidRequest
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.enrichment import enrich
from fleet.pipeline.targeting import eligible
from fleet.sim.market import Market

PARAMS = {"objective": "binary:logistic", "eval_metric": "logloss", "max_depth": 6, "eta": 0.1,
          "min_child_weight": 5.0, "subsample": 0.8, "colsample_bytree": 0.9, "lambda": 2.0,
          "tree_method": "hist", "nthread": 2}


def make_dataset(n: int, seed: int, market_seed: int = 7, log=print) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, click labels, true click probabilities) for ``n`` logged impressions."""
    regions = load_regions()
    campaigns = load_catalog(regions.defaults.catalog)
    market = Market(seed=market_seed, regions=tuple(regions.regions))
    bidders = {r: RegionBidder(r, regions, campaigns) for r in regions.regions}
    rng = random.Random(seed + 100)
    when = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)
    rows, labels, truth = [], [], []
    t0 = time.time()
    while len(rows) < n:
        opp = market.opportunity(rng, rng.choice(market.regions))
        req = msgspec.convert(opp.to_openrtb(), BidRequest)
        imp, user, b = req.imp[0], enrich(req), bidders[opp.region]
        options = eligible(b.index, req, imp, user, when)
        if not options:
            continue
        c, cr = rng.choice(options)
        p = market.ctr(opp, c)
        rows.append(FeatureBuilder(req, imp, user, opp.floor).row(c, cr))
        labels.append(1.0 if rng.random() < p else 0.0)
        truth.append(p)
        if len(rows) % 50_000 == 0:
            log(f"  data: {len(rows):,} / {n:,} rows ({time.time() - t0:.0f} s)")
    return matrix(rows), np.asarray(labels, np.float32), np.asarray(truth, np.float64)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U), ties averaged."""
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = p[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = y == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration(p: np.ndarray, y: np.ndarray, truth: np.ndarray, bins: int = 10) -> list[dict]:
    """By deciles of prediction: mean predicted, observed click rate, mean true probability."""
    edges = np.quantile(p, np.linspace(0, 1, bins + 1))
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (p >= lo) & (p <= hi)
        if m.any():
            out.append({"predicted": round(float(p[m].mean()), 6), "observed": round(float(y[m].mean()), 6),
                        "true": round(float(truth[m].mean()), 6), "rows": int(m.sum())})
    return out


def train(name: str, version: str, rows: int, seed: int, rounds: int = 300, market_seed: int = 7,
          log=print) -> dict:
    out_dir = REPO_ROOT / "models" / name / version
    log(f"generating {rows:,} logged impressions from the market (market seed {market_seed}, seed {seed})")
    X, y, truth = make_dataset(rows, seed, market_seed, log=log)
    idx = np.random.default_rng(seed).permutation(len(y))
    n_test, n_valid = len(y) // 5, len(y) // 10
    test, valid, tr = idx[:n_test], idx[n_test:n_test + n_valid], idx[n_test + n_valid:]
    dtrain = xgb.DMatrix(X[tr], label=y[tr], feature_names=[f"f{i}" for i in range(N_FEATURES)])
    dvalid = xgb.DMatrix(X[valid], label=y[valid], feature_names=[f"f{i}" for i in range(N_FEATURES)])
    log(f"training: {len(tr):,} rows, early stopping on {len(valid):,}")
    t0 = time.time()
    booster = xgb.train({**PARAMS, "seed": seed}, dtrain, rounds, evals=[(dvalid, "valid")],
                        early_stopping_rounds=30, verbose_eval=50)
    booster = booster[: booster.best_iteration + 1]
    train_s = time.time() - t0
    p = booster.inplace_predict(X[test])
    yt, tt = y[test], truth[test]
    gain = booster.get_score(importance_type="total_gain")
    total_gain = sum(gain.values()) or 1.0
    metrics = {
        "rows": {"train": int(len(tr)), "valid": int(len(valid)), "test": int(len(test))},
        "trees": int(booster.num_boosted_rounds()),
        "test_auc": round(auc(yt, p), 4),
        "test_auc_of_truth": round(auc(yt, tt), 4),  # the ceiling: the true probability's own AUC
        "test_logloss": round(logloss(yt, p), 5),
        "test_logloss_of_truth": round(logloss(yt, tt), 5),
        "mean_abs_error_vs_truth": round(float(np.mean(np.abs(p - tt))), 6),
        "mean_predicted": round(float(p.mean()), 6), "mean_true": round(float(tt.mean()), 6),
        "click_rate": round(float(yt.mean()), 6),
        "train_seconds": round(train_s, 1),
    }
    report = {
        "metrics": metrics,
        "calibration": calibration(p, yt, tt),
        "feature_importance_gain_share": {
            FEATURES[int(k[1:])]: round(v / total_gain, 4)
            for k, v in sorted(gain.items(), key=lambda kv: -kv[1])
        },
    }
    log(f"exporting to {out_dir.relative_to(REPO_ROOT)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = export.export_all(booster, N_FEATURES, out_dir)
    agreement = export.check_agreement(booster, out_dir, X[test][:4000])
    bad = {k: v for k, v in agreement.items() if not v <= 1e-5}
    if bad:
        raise RuntimeError(f"export disagrees with XGBoost: {bad}")
    manifest = {
        "name": name, "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "task": "P(click | impression, campaign)",
        "features": list(FEATURES),
        "artifacts": artifacts,
        "agreement_max_abs_diff": {k: float(v) for k, v in agreement.items()},
        "metrics": metrics,
        "training": {"command": f"fleet model train --name {name} --version {version} --rows {rows} "
                                f"--seed {seed} --market-seed {market_seed}",
                     "seed": seed, "market_seed": market_seed, "rows": rows, "params": PARAMS, "rounds": rounds,
                     "xgboost": xgb.__version__},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(metrics, indent=2))
    return manifest

