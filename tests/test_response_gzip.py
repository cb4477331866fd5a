"""Responses are gzipped when the exchange's Accept-Encoding accepts gzip (RFC 9110 weights
included) and the body is over one TCP segment (``fleet.openrtb.codec.maybe_gzip``)."""

from __future__ import annotations

import gzip
import json

import pytest

from fleet.campaigns.catalog import load_catalog
from fleet.openrtb.codec import GZIP_MIN_BYTES, accepts_gzip, maybe_gzip
from fleet.pipeline.bidder import RegionBidder

REQ = {"id": "gz1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}], "device": {"geo": {"country": "USA"}}}


@pytest.mark.parametrize("header,accepted", [
    ("gzip", True), ("GZIP, deflate", True), ("deflate, gzip", True), ("x-gzip", True),
    ("gzip;q=0.5", True), ("gzip; q=0.001", True), ("*", True), ("br;q=1, *;q=0.5", True),
    ("gzip;q=0", False), ("deflate, gzip;q=0.0", False), ("gzip;q=0, *", False), ("*;q=0", False),
    ("identity", False), ("deflate", False), ("br", False), ("gzipx", False), ("", False),
])
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    assert accepts_gzip(header) is accepted


def test_only_bodies_over_one_segment_are_compressed_and_they_round_trip():
    small, large = b"x" * (GZIP_MIN_BYTES - 1), json.dumps({"k": list(range(800))}).encode()
    assert maybe_gzip(small, "gzip") == (small, False)
    out, gz = maybe_gzip(large, "gzip")
    assert gz and gzip.decompress(out) == large and len(out) < len(large)
    assert maybe_gzip(large, None) == (large, False)
    assert maybe_gzip(large, "gzip;q=0") == (large, False)


@pytest.mark.parametrize("header,compressed", [("gzip", True), ("gzip;q=0", False), (None, False)])
def test_a_bid_response_is_gzipped_only_when_accepted(regions, header, compressed):
    bidder = RegionBidder("us-east", regions, load_catalog(regions.defaults.catalog))
    a = bidder.bid(json.dumps(REQ).encode(), accept_encoding=header)
    assert a.status == 200
    assert (a.headers.get("content-encoding") == "gzip") is compressed
    body = gzip.decompress(a.body) if compressed else a.body
    assert json.loads(body)["seatbid"][0]["bid"][0]["impid"] == "1"
    assert len(body) >= GZIP_MIN_BYTES  # a bid with its notice URLs is over the threshold
