"""Request traces: one span per stage of the bid path, sampled at the head plus every degraded or
failed request, built after the answer has left.

The bid path already times every stage (``Deadline.spent``), so tracing adds nothing to a
request that is not kept: the decision is made at the end (the upstream ``traceparent``'s
sampled flag, else a coin at ``rate``; a degraded, late or failed request is always kept), and
only a kept request becomes spans, with their real start and end times. A span carries the
stage's budget, the time it used and the degradation flags; the root span carries the deadline,
tier, status, no-bid reason and pricing source.

Export: OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise JSON lines in
``.fleet/traces/`` (``OTEL_TRACES_EXPORTER=console`` prints them instead).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from fleet.pipeline.deadline import now

log = logging.getLogger("fleet.tracing")
_propagator = TraceContextTextMapPropagator()


_compact = json.JSONEncoder(separators=(",", ":"))


class JsonLinesExporter(SpanExporter):
    """Spans as JSON lines in a file: the local default, readable without a collector.

    A line is the SDK's ``ReadableSpan.to_json()`` made compact, byte for byte, built without its
    costs: ``to_json`` encodes with ``indent=4`` (Python's pure-Python encoder, not the C one)
    and encodes and re-reads the resource for every span; here the span's dict goes through the
    C encoder once and the resource's is made once per provider (~20 instead of ~70 us a span,
    ~10 us of the ingress's CPU per request at saturation: docs/benchmarks.md, issue 24)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._resource = self._resource_dict = None

    def line(self, s) -> str:
        """``json.dumps(json.loads(s.to_json()), separators=(",", ":"))``, cheaper."""
        try:
            r = s.resource
            if r is not self._resource:
                self._resource, self._resource_dict = r, json.loads(r.to_json())
            status = {"status_code": str(s.status.status_code.name)}
            if s.status.description:
                status["description"] = s.status.description
            return _compact.encode({
                "name": s.name, "context": s._format_context(s.context) if s.context else None,
                "kind": str(s.kind),
                "parent_id": f"0x{trace.format_span_id(s.parent.span_id)}" if s.parent is not None else None,
                "start_time": ns_to_iso_str(s.start_time) if s.start_time else None,
                "end_time": ns_to_iso_str(s.end_time) if s.end_time else None,
                "status": status, "attributes": s._format_attributes(s.attributes),
                "events": s._format_events(s.events), "links": s._format_links(s.links),
                "resource": self._resource_dict})
        except AttributeError:  # an SDK without the helpers to_json uses: its own way
            return json.dumps(json.loads(s.to_json()), separators=(",", ":"))

    def export(self, spans) -> SpanExportResult:
        with open(self.path, "a") as fh:
            fh.write("".join(self.line(s) + "\n" for s in spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def default_exporter(name: str) -> SpanExporter:
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()  # endpoint, headers and timeout from the OTEL_* variables
        except ImportError as exc:  # not installed: say so, and keep traces locally
            log.error("OTLP exporter unavailable (%s); traces go to .fleet/traces", exc)
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from fleet.config import REPO_ROOT

    return JsonLinesExporter(REPO_ROOT / ".fleet" / "traces" / f"{name}.jsonl")


class RequestTracer:
    def __init__(self, region: str, replica: str, rate: float = 0.01, exporter: SpanExporter | None = None,
                 rng=random.random, batch: bool = True, max_forced_per_s: float = 20.0):
        self.rate = rate
        self.rng = rng
        # Degraded and failed requests are always kept, up to this many a second: under overload
        # every request degrades, and tracing each would add load exactly when there is none to
        # spare. Past the cap they fall back to head sampling (and are counted as dropped).
        self.max_forced_per_s = max_forced_per_s
        self._tokens = max_forced_per_s
        self._refilled = time.monotonic()
        resource = Resource.create({"service.name": "fleet-region", "fleet.region": region,
                                    "fleet.replica": replica})
        self.provider = TracerProvider(resource=resource)
        exp = exporter if exporter is not None else default_exporter(f"{region}-{replica}")
        if batch:
            self.provider.add_span_processor(BatchSpanProcessor(exp, max_queue_size=4096,
                                                                schedule_delay_millis=1000))
        else:
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            self.provider.add_span_processor(SimpleSpanProcessor(exp))
        self.tracer = self.provider.get_tracer("fleet.bid_path")
        self.kept = {"head": 0, "upstream": 0, "degraded": 0, "failed": 0, "over_cap": 0}

    def _forced(self) -> bool:
        t = time.monotonic()
        self._tokens = min(self.max_forced_per_s, self._tokens + (t - self._refilled) * self.max_forced_per_s)
        self._refilled = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.kept["over_cap"] += 1
        return False

    def decide(self, status: int, degraded, late: bool, parent_sampled: bool) -> str | None:
        """Why this request is kept, or None."""
        if (status >= 500 or late) and self._forced():
            return "failed"
        if degraded and self._forced():
            return "degraded"
        if parent_sampled:
            return "upstream"
        if self.rate > 0 and self.rng() < self.rate:
            return "head"
        return None

    def keep(self, answer, headers=None):
        """Whether to trace this answered request: (why, upstream context), or None. Cheap, so
        the caller decides on the request's path and builds spans only for kept ones."""
        ctx = _propagator.extract(headers or {}) if headers and "traceparent" in headers else None
        parent = trace.get_current_span(ctx).get_span_context() if ctx is not None else None
        parent_sampled = bool(parent is not None and parent.is_valid and parent.trace_flags.sampled)
        why = self.decide(answer.status, answer.degraded, answer.reason == "deadline", parent_sampled)
        if why is None:
            return None
        self.kept[why] += 1
        return why, ctx

    def record(self, answer, arrival: float, headers=None, dl=None, attrs: dict | None = None) -> bool:
        """Spans for one answered request, if it is kept. ``answer``: the bidder's ``Answer``;
        ``arrival``: its perf-counter arrival at the fleet (the ingress's stamp: the trace starts
        with its ``queue`` span); ``headers``: the request's."""
        kept = self.keep(answer, headers)
        if kept is None:
            return False
        self.emit(answer, arrival, kept, dl, attrs)
        return True

    def emit(self, answer, arrival: float, kept: tuple, dl=None, attrs: dict | None = None) -> None:
        """The spans of a kept request (``kept``: what ``keep`` returned)."""
        why, ctx = kept
        # perf-counter seconds to epoch nanoseconds, anchored now
        offset_ns = time.time_ns() - int(now() * 1e9)
        start_ns = int(arrival * 1e9) + offset_ns
        total = answer.spent.get("total", now() - arrival)
        root_attrs = {"fleet.status": answer.status, "fleet.reason": answer.reason or "",
                      "fleet.degraded": list(answer.degraded), "fleet.kept": why,
                      "fleet.total_ms": round(total * 1000, 3)}
        if dl is not None:
            root_attrs.update({"fleet.deadline_ms": round(dl.budget_s * 1000, 3), "fleet.tier": dl.tier})
        if attrs:
            root_attrs.update(attrs)
        root = self.tracer.start_span("bid", context=ctx, start_time=start_ns, attributes=root_attrs)
        child_ctx = trace.set_span_in_context(root)
        t = start_ns
        stages = [(k, v) for k, v in answer.spent.items() if k != "total"]
        # Admission (decode, validation, the cheap rejections) runs before the deadline exists
        # to time it: it is what the stages leave of the total. It follows the queue (the time
        # from the ingress's arrival stamp to the handler), which comes first.
        before = total - sum(v for _, v in stages)
        if stages and before > 0:
            stages.insert(1 if stages[0][0] == "queue" else 0, ("admission", before))
        for stage, spent in stages:
            a = {"fleet.used_ms": round(spent * 1000, 4)}
            if dl is not None and stage in dl.shares:
                a["fleet.budget_ms"] = round(dl.shares[stage] * dl.budget_s * 1000, 3)
            flags = [d for d in answer.degraded if d.startswith(stage) or d.split("_")[0] == stage]
            if flags:
                a["fleet.degraded"] = flags
            end = t + int(spent * 1e9)
            self.tracer.start_span(stage, context=child_ctx, start_time=t, attributes=a).end(end_time=end)
            t = end
        root.end(end_time=start_ns + int(total * 1e9))

    def shutdown(self) -> None:
        self.provider.shutdown()
