"""Model pricing: the committed version loads, prices, records itself, and falls back to rule."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from conftest import MODEL
from fleet.campaigns.catalog import load_catalog
from fleet.ml.features import FEATURES, N_FEATURES
from fleet.ml.scorer import ModelError, load_scorer, model_dir
from fleet.pipeline.bidder import RegionBidder
from fleet.pipeline.pricing import WinRateModel

REQ = {"id": "m1", "at": 1, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.2}],
       "device": {"geo": {"country": "USA"}, "devicetype": 4, "os": "ios"},
       "user": {"id": "u1", "data": [{"segment": [{"id": "runner"}]}]},
       "site": {"domain": "site3.example", "publisher": {"id": "pub-3"}}}


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(MODEL, "onnx-cpu")


def test_committed_model_is_consistent(scorer):
    m = scorer.manifest
    assert m["features"] == list(FEATURES)
    assert all(v <= 1e-5 for v in m["agreement_max_abs_diff"].values())
    assert m["metrics"]["test_auc"] > 0.6
    p = scorer.predict(np.zeros((3, N_FEATURES), np.float32))
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))


def test_backends_agree_on_the_same_rows(scorer):
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 300, size=(500, N_FEATURES)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan
    ref = load_scorer(MODEL, "xgboost-cpu").predict(X)
    assert np.max(np.abs(scorer.predict(X) - ref)) <= 1e-5
    tensorized = load_scorer(MODEL, "onnx-cuda")  # falls back to the CPU provider without a GPU
    assert np.max(np.abs(tensorized.predict(X) - ref)) <= 1e-5


def test_a_tampered_artifact_is_refused(tmp_path):
    import shutil

    d = tmp_path / "ctr" / "vX"
    shutil.copytree(model_dir(MODEL), d)
    with open(d / "model_treeensemble.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError):
        load_scorer(str(d), "onnx-cpu")


def test_model_prices_bids_and_records_the_version(regions, scorer):
    bidder = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog), scorer=scorer)
    a = bidder.bid(json.dumps(REQ).encode(), version="2.6")
    assert a.status == 200
    resp = json.loads(a.body)
    bid = resp["seatbid"][0]["bid"][0]
    assert bid["ext"]["pricing"] == f"model:{MODEL}"
    assert resp["ext"]["fleet"]["pricing"] == f"model:{MODEL}"
    assert 0.2 <= bid["price"]


class Broken:
    version = "ctr/broken"

    def predict(self, X):
        raise RuntimeError("model server on fire")


def test_a_failing_model_falls_back_to_rule_pricing(regions):
    bidder = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog), scorer=Broken())
    a = bidder.bid(json.dumps(REQ).encode(), version="2.6")
    assert a.status == 200
    assert "pricing_rule_fallback" in a.degraded
    assert json.loads(a.body)["seatbid"][0]["bid"][0]["ext"]["pricing"] == "rule"
    assert bidder.stats["pricing.model_error"] == 1


def test_shading_maximises_expected_surplus():
    w = WinRateModel(median_cpm=1.5, slope=3.0)
    values = np.array([0.5, 2.0, 8.0])
    bids = w.shade(values)
    assert np.all(bids < values) and np.all(bids > 0)
    # Brute force over a fine grid agrees with the 40-point grid within its step.
    for v, b in zip(values, bids):
        grid = np.linspace(0.01, v, 4000)
        win = 1 / (1 + np.exp(-3.0 * (np.log(grid) - np.log(1.5))))
        best = grid[np.argmax((v - grid) * win)]
        assert abs(best - b) <= v / 39 + 1e-9


@pytest.mark.slow
def test_model_region_over_http(fleet_http):
    ready = httpx.get(f"{fleet_http}/model/us-east/ready").json()
    assert ready["pricing"] == f"model:{MODEL}" and not ready["model_error"]
    r = httpx.post(f"{fleet_http}/model/us-east/openrtb2/bid", json={**REQ, "id": "m-http"},
                   headers={"x-openrtb-version": "2.6"})
    assert r.status_code == 200
    assert r.json()["seatbid"][0]["bid"][0]["ext"]["pricing"] == f"model:{MODEL}"


@pytest.mark.slow
def test_version_switch_under_load_is_in_place_with_zero_errors(fleet_http):
    """Change only the model in user_config and apply the config (as `serve deploy` does)
    while traffic flows: every request answered, both versions served, the same replica."""
    import asyncio
    import threading
    import time

    import aiohttp
    from conftest import deploy_config, serve_test_config

    url = f"{fleet_http}/model/us-east/openrtb2/bid"
    before = httpx.get(f"{fleet_http}/model/us-east/ready").json()
    results: list[tuple[int, str]] = []

    async def load(seconds: float, rate: float) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async def one(i: int) -> None:
                body = json.dumps({**REQ, "id": f"switch-{i}"})
                try:
                    async with session.post(url, data=body, headers={"x-openrtb-version": "2.6"}) as r:
                        payload = await r.read()
                        src = json.loads(payload)["seatbid"][0]["bid"][0]["ext"]["pricing"] if r.status == 200 else ""
                        results.append((r.status, src))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    results.append((0, repr(exc)[:120]))

            tasks = []
            start = time.perf_counter()
            for i in range(int(seconds * rate)):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

    loader = threading.Thread(target=lambda: asyncio.run(load(10.0, 60.0)))
    loader.start()
    time.sleep(2.0)

    def switch(version: str) -> None:
        deploy_config(serve_test_config(version))  # only the user_config changes

    switch("ctr/v2")
    deadline = time.monotonic() + 60
    while httpx.get(f"{fleet_http}/model/us-east/ready").json()["pricing"] != "model:ctr/v2":
        assert time.monotonic() < deadline, "the new version never became active"
        time.sleep(0.2)
    loader.join()
    after = httpx.get(f"{fleet_http}/model/us-east/ready").json()
    try:
        assert len(results) == 600
        errors = [(i, s, src) for i, (s, src) in enumerate(results) if s not in (200, 204)]
        assert not errors, (len(errors), errors[:3], before, after)
        sources = {src for _, src in results if src}
        assert sources == {"model:ctr/v1", "model:ctr/v2"}  # both served, each bid records which
        assert after["replica"] == before["replica"]  # reconfigured in place, not replaced
    finally:
        switch(MODEL)
        while httpx.get(f"{fleet_http}/model/us-east/ready").json()["pricing"] != f"model:{MODEL}":
            time.sleep(0.2)


def test_win_rate_model_learns_a_publisher_from_notices():
    """Outbid or not against a market whose median winning price is 3.0: m moves to ~3."""
    rng = np.random.default_rng(3)
    w = WinRateModel(median_cpm=1.5, slope=3.0)
    for _ in range(4000):
        bid = float(np.exp(rng.uniform(np.log(0.5), np.log(12))))
        competing = float(np.exp(np.log(3.0) + rng.logistic(0, 1 / 3.0)))
        w.update("pub-x", bid, bid > competing)
    assert abs(np.exp(w.log_m("pub-x")) - 3.0) < 0.45
    assert w.log_m("unknown") == pytest.approx(np.log(1.5))
    v = np.array([6.0])
    assert w.shade(v, "pub-x")[0] > w.shade(v, None)[0]  # a dearer publisher: shade less


def test_notices_feed_the_bidders_win_rate_model(regions, scorer):
    from fleet.pipeline.notices import NoticeSettlement, parse_notice

    bidder = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog), scorer=scorer)
    a = bidder.bid(json.dumps(REQ).encode(), version="2.6")
    bid = json.loads(a.body)["seatbid"][0]["bid"][0]
    assert "&p=pub-3&" in bid["lurl"] and "&b=" in bid["lurl"]
    query = bid["lurl"].split("?", 1)[1].replace("${AUCTION_LOSS}", "102").replace("${AUCTION_MIN_TO_WIN}", "9")
    before = bidder.win_rate.log_m("pub-3")
    NoticeSettlement(bidder).learn(parse_notice("loss", query, "us-east"))
    assert bidder.win_rate.log_m("pub-3") > before  # outbid: winning costs more there than we thought


def test_win_rate_is_fitted_per_publisher_segment_with_backoff():
    """Video on pub-x clears near 8, banner near 2: each segment learns its own median once it
    has enough notices; a segment without them backs off to the publisher."""
    rng = np.random.default_rng(5)
    w = WinRateModel(median_cpm=1.5, slope=3.0, min_obs=50)
    for _ in range(6000):
        seg, market = ("video", 8.0) if rng.random() < 0.5 else ("banner", 2.0)
        bid = float(np.exp(rng.uniform(np.log(0.5), np.log(30))))
        competing = float(np.exp(np.log(market) + rng.logistic(0, 1 / 3.0)))
        w.observe("pub-x", seg, bid, bid > competing)
    assert abs(np.exp(w.log_m("pub-x", "video")) - 8.0) < 1.5
    assert abs(np.exp(w.log_m("pub-x", "banner")) - 2.0) < 0.4
    assert w.log_m("pub-x", "audio") == w.log_m("pub-x")  # no evidence yet: the publisher's
    v = np.array([10.0, 10.0])
    video, banner = w.shade(v, "pub-x", ["video", "banner"])
    assert video > banner  # the dearer segment is shaded less
