"""The local trace file: each line is the SDK's own ``to_json()`` of the span made compact, byte for
byte, although the exporter builds it without ``to_json`` (the cheaper path, issue 24)."""

from __future__ import annotations

import json

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status, StatusCode

from fleet.obs.tracing import JsonLinesExporter


class _Keep(SpanExporter):
    def __init__(self):
        self.spans = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _spans(resource: Resource):
    keep = _Keep()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    t = provider.get_tracer("fleet.bid_path")
    root = t.start_span("bid", start_time=1_700_000_000_123_456_789, attributes={
        "fleet.status": 200, "fleet.reason": "", "fleet.degraded": ["enrichment_late", "pricing"],
        "fleet.kept": "degraded", "fleet.total_ms": 12.345, "fleet.tier": "gold \u00e9\"\\\n"})
    ctx = trace.set_span_in_context(root)
    child = t.start_span("pricing", context=ctx, start_time=1_700_000_000_200_000_000,
                         attributes={"fleet.used_ms": 0.1234, "fleet.budget_ms": 5.0},
                         links=[Link(root.get_span_context(), {"why": "test"})])
    child.add_event("fallback", {"to": "rule"}, timestamp=1_700_000_000_250_000_000)
    child.set_status(Status(StatusCode.ERROR, "model failure"))
    child.end(end_time=1_700_000_000_300_000_000)
    t.start_span("open").end()  # no attributes, default times
    root.end(end_time=1_700_000_000_400_000_000)
    return keep.spans


def test_lines_are_the_sdks_to_json_made_compact(tmp_path):
    spans = _spans(Resource.create({"service.name": "fleet-region", "fleet.region": "us-east",
                                    "fleet.replica": "r1"}))
    spans += _spans(Resource.create({"service.name": "fleet-region", "fleet.region": "eu-west"}))  # a second resource
    exp = JsonLinesExporter(tmp_path / "t.jsonl")
    assert exp.export(spans) == SpanExportResult.SUCCESS
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert lines == [json.dumps(json.loads(s.to_json()), separators=(",", ":")) for s in spans]
    assert json.loads(lines[-1])["resource"]["attributes"]["fleet.region"] == "eu-west"
    pricing = next(json.loads(x) for x in lines if json.loads(x)["name"] == "pricing")
    assert pricing["status"] == {"status_code": "ERROR", "description": "model failure"}
    assert pricing["events"][0]["name"] == "fallback" and pricing["links"] and pricing["parent_id"]


def test_an_sdk_without_the_helpers_falls_back_to_to_json(tmp_path):
    class Bare:
        resource = Resource.create({"service.name": "x"})

        def to_json(self):
            return json.dumps({"name": "bare", "a": [1, 2]}, indent=4)

    exp = JsonLinesExporter(tmp_path / "t.jsonl")
    exp.export([Bare()])
    assert (tmp_path / "t.jsonl").read_text() == '{"name":"bare","a":[1,2]}\n'
