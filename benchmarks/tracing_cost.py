"""What tracing costs one request, measured in-process (CPU µs per request).

A request's trace as the middleware and the pipeline make it: ``Tracing.begin`` with a
client's ``traceparent``, five stages recorded (auth, rate_limit, guard, queue, chat), then
``Tracing.end``. Three set-ups: trace context only (the default: no exporter), spans built
and queued for an exporter (what ``exporter: discard`` and every exporter pay on the request
path), and, for comparison, the same spans made through the SDK's own ``Tracer.start_span``
and ``BatchSpanProcessor``. Last, the OTLP exporter's protobuf encoding of those spans, which
an exporting server pays in its export thread (under the GIL).

    python benchmarks/tracing_cost.py [--quick]
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from _common import log, parse_args, report, table
from shipway.config import TracingSettings
from shipway.telemetry.tracing import Tracing

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STAGES = ("auth", "rate_limit", "guard", "queue", "chat fixed")
ROOT = {
    "http.route": "/v1/chat/completions",
    "http.request.method": "POST",
    "shipway.request_id": "0123456789abcdef",
    "gen_ai.request.model": "fixed",
    "gen_ai.usage.input_tokens": 5,
    "gen_ai.usage.output_tokens": 1,
}


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def shipway_request(tracing: Tracing) -> None:
    request = tracing.begin(PARENT, "POST", "/v1/chat/completions")
    assert request is not None
    if request.recording:  # as the pipeline does: no stage bookkeeping when not exported
        for name in STAGES:
            with request.stage(name, {"gen_ai.request.model": "fixed"}):
                pass
    tracing.end(request, 200, dict(ROOT))
    request.traceparent()


def sdk_request(tracer: Any) -> None:
    root = tracer.start_span("POST /v1/chat/completions", attributes=dict(ROOT))
    context = trace.set_span_in_context(root)
    for name in STAGES:
        tracer.start_span(name, context=context, attributes={"m": "fixed"}).end()
    root.end()


def per_request_us(run: Any, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        run()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count = 2_000 if args.quick else 20_000
    context_only = Tracing(TracingSettings(), {})
    exporting = Tracing(TracingSettings(exporter="discard"), {})
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1_000_000))
    tracer = provider.get_tracer("bench")
    rows = []
    log("trace context only")
    rows.append(
        [
            "trace context only (default)",
            per_request_us(lambda: shipway_request(context_only), count),
        ]
    )
    log("spans built and queued")
    built = per_request_us(lambda: shipway_request(exporting), count)
    rows.append(["6 spans built and queued (Shipway)", built])
    queued = exporting._queued[:6_000]
    exporting._queued.clear()
    log("spans through the SDK's live spans")
    rows.append(
        [
            "6 spans via Tracer.start_span + BatchSpanProcessor",
            per_request_us(lambda: sdk_request(tracer), count // 4),
        ]
    )
    provider.shutdown()
    log("OTLP encoding")
    start = time.process_time()
    encode_spans(queued).SerializeToString()
    rows.append(
        [
            "OTLP protobuf encoding of the 6 spans (export thread)",
            (time.process_time() - start) / (len(queued) / 6) * 1e6,
        ]
    )
    report(
        "Tracing cost per request (in process)",
        [table(["what", "CPU µs per request"], [[name, f"{us:.1f}"] for name, us in rows])],
        [f"{count} requests each (the SDK row a quarter of that); CPU time of this process."],
    )


if __name__ == "__main__":
    main()
