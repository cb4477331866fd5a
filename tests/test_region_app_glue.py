"""The region deployment's own per-request glue (issue 24): the headers the bid path reads come
from a plain dict that answers as Starlette's ``Headers`` does, and the deployment is built
without Serve's per-request access log (the region counts and times every request itself)."""

from __future__ import annotations

from starlette.requests import Request

from fleet.config import RegionAppArgs
from fleet.serve.region_app import ACCESS_LOG_OFF, build_app, plain_headers


def test_plain_headers_answer_as_starlette_does_with_repeats_and_odd_bytes():
    raw = [(b"x-fleet-arrival", b"111.5"), (b"content-length", b"12"), (b"x-fleet-arrival", b"999.0"),
           (b"x-odd", b"caf\xe9 \xff"), (b"accept-encoding", b"gzip;q=0, br"), (b"traceparent", b"00-ab-cd-01")]
    starlette = Request({"type": "http", "headers": raw}).headers
    mine = plain_headers({"headers": raw})
    for name in ("x-fleet-arrival", "content-length", "x-odd", "accept-encoding", "traceparent", "missing"):
        assert mine.get(name) == starlette.get(name), name
        assert (name in mine) == (name in starlette)
    assert mine["x-fleet-arrival"] == "111.5"  # the first of a repeated header, as before (not the last)


def test_the_ingress_deployment_has_no_serve_access_log():
    app = build_app(RegionAppArgs(region="us-east", regions_file="regions.yaml", model="ctr/v1"))
    cfg = app._bound_deployment._deployment_config.logging_config
    assert ACCESS_LOG_OFF == {"enable_access_log": False}
    assert cfg["enable_access_log"] is False and cfg["log_level"] == "INFO"  # Serve's other logs stay
