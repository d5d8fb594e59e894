"""Trace context and span building (telemetry/tracing.py), with an in-memory exporter."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from shipway.config import TracingSettings
from shipway.telemetry import tracing as tracing_module
from shipway.telemetry.tracing import Tracing

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED_PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


class Collected(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def exporting(monkeypatch: pytest.MonkeyPatch, ratio: float = 1.0) -> tuple[Tracing, Collected]:
    collected = Collected()
    monkeypatch.setattr(tracing_module, "_exporter", lambda settings, environ: collected)
    tracing = Tracing(TracingSettings(sample_ratio=ratio), {"OTEL_BSP_SCHEDULE_DELAY": "10"})
    return tracing, collected


def test_without_an_exporter_only_the_context_is_kept() -> None:
    tracing = Tracing(TracingSettings(), {})
    assert not tracing.exporting
    trace = tracing.begin(PARENT, "POST", "/v1/chat/completions")
    assert trace is not None and not trace.recording
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_span_id == "00f067aa0ba902b7"
    assert re.fullmatch(r"00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01", trace.traceparent())
    with trace.stage("guard") as attrs:  # a no-op, but usable
        attrs["x"] = 1
    assert trace.stages is None


@pytest.mark.parametrize(
    "header",
    [
        b"garbage",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"\xff\xfe",
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(header: bytes) -> None:
    trace = Tracing(TracingSettings(), {}).begin(header, "GET", "/v1/models")
    assert trace is not None
    assert trace.parent_span_id is None
    assert trace.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert re.fullmatch(r"[0-9a-f]{32}", trace.trace_id) and trace.trace_id != "0" * 32


def test_disabled_tracing_makes_no_trace() -> None:
    assert Tracing(TracingSettings(enabled=False), {}).begin(PARENT, "GET", "/") is None


def test_the_client_sampled_flag_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing, _ = exporting(monkeypatch, ratio=0.0)
    sampled = tracing.begin(PARENT, "GET", "/")
    unsampled = tracing.begin(UNSAMPLED_PARENT, "GET", "/")
    assert sampled is not None and sampled.recording
    assert unsampled is not None and not unsampled.recording
    assert unsampled.traceparent().endswith("-00")


def test_new_traces_are_sampled_at_the_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    tracing, _ = exporting(monkeypatch, ratio=0.25)
    traces = [tracing.begin(None, "GET", "/") for _ in range(4000)]
    share = sum(1 for t in traces if t is not None and t.recording) / len(traces)
    assert 0.2 < share < 0.3
    none, _ = exporting(monkeypatch, ratio=0.0)
    assert not any(t and t.recording for t in (none.begin(None, "GET", "/") for _ in range(500)))


async def test_spans_are_built_under_the_request_span_and_exported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tracing, collected = exporting(monkeypatch)
    await tracing.start()
    trace = tracing.begin(PARENT, "POST", "/v1/chat/completions")
    assert trace is not None and trace.recording
    with trace.stage("rate_limit"):
        pass
    with pytest.raises(ValueError), trace.stage("chat m", {"gen_ai.request.model": "m"}):
        raise ValueError("boom")
    tracing.end(
        trace,
        502,
        {"http.route": "/v1/chat/completions", "http.request.method": "POST"},
    )
    for _ in range(100):
        if len(collected.spans) == 3:
            break
        await asyncio.sleep(0.01)
    await tracing.stop()
    by_name = {span.name: span for span in collected.spans}
    root = by_name["POST /v1/chat/completions"]
    assert root.kind is SpanKind.SERVER
    assert root.parent is not None and root.parent.span_id == 0x00F067AA0BA902B7
    assert root.context is not None
    assert f"{root.context.span_id:016x}" == trace.span_id
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 502
    failed = by_name["chat m"]
    assert failed.parent is not None and failed.parent.span_id == root.context.span_id
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"] == "ValueError"
    assert by_name["rate_limit"].status.status_code is StatusCode.UNSET
    assert {span.context.trace_id for span in collected.spans if span.context} == {
        0x4BF92F3577B34DA6A3CE929D0E0E4736
    }
