"""W3C trace context on every request; OpenTelemetry spans when they are exported.

Every request gets a ``RequestTrace``: the client's ``traceparent`` continued (or a new trace),
returned in the response's ``traceparent`` header, its trace id in the access-log line. That
is all that happens without an exporter: two random ids and a header, no SDK objects, so
tracing configured but not exported costs next to nothing.

With an exporter (``telemetry.tracing.otlp_endpoint``, or ``console``/``discard``), the sampling
decision is made when the request arrives (a client's sampled flag is followed, else
``sample_ratio`` of new traces), and a sampled request *records* its stages as (name, start,
end, attributes) tuples while it runs: no span objects, no context switching across the
stream's tasks. When the request ends, its server span and one span per stage are built as
finished ``ReadableSpan``s into a bounded queue, exported once a batch interval from
a thread. Building them directly, rather than through ``Tracer.start_span`` and the SDK's
``BatchSpanProcessor``, costs a tenth as much (its live spans lock, copy and validate every
attribute): ``benchmarks/tracing_cost.py``, docs/performance.md. Span names and attributes
follow OpenTelemetry's HTTP and GenAI semantic conventions (``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` …). Prompts, answers, headers and keys never go into a span.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from shipway.config import TracingSettings

__all__ = ["RequestTrace", "Tracing"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
_UNSET = Status(StatusCode.UNSET)
# TraceIdRatioBased's rule: the low 64 bits of the trace id under ratio * 2^64.
_TRACE_ID_LOW = (1 << 64) - 1
_MAX_QUEUED_SPANS = 16_384

Attributes = dict[str, Any]


class RequestTrace:
    """One request's place in a trace, and the stages it records while it runs."""

    __slots__ = ("parent_span_id", "sampled", "span_id", "stages", "start_ns", "trace_id")

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        sampled: bool,
        recording: bool = False,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        # Stages are kept only when spans will be exported: otherwise ``stage`` is a no-op.
        self.stages: list[tuple[str, int, int, Attributes]] | None = [] if recording else None
        self.start_ns = time.time_ns() if recording else 0

    @property
    def recording(self) -> bool:
        return self.stages is not None

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def add(self, name: str, start_ns: int, end_ns: int, attributes: Attributes) -> None:
        if self.stages is not None:
            self.stages.append((name, start_ns, end_ns, attributes))

    @contextmanager
    def stage(self, name: str, attributes: Attributes | None = None) -> Iterator[Attributes]:
        """Time a stage; the yielded dict takes attributes learned inside it."""
        attrs: Attributes = {} if attributes is None else attributes
        if self.stages is None:
            yield attrs
            return
        start = time.time_ns()
        try:
            yield attrs
        except BaseException as exc:
            attrs.setdefault("error.type", getattr(exc, "code", None) or type(exc).__name__)
            raise
        finally:
            self.stages.append((name, start, time.time_ns(), attrs))


class Tracing:
    """Makes a ``RequestTrace`` per request; turns recorded ones into exported spans."""

    def __init__(self, settings: TracingSettings, environ: Mapping[str, str]) -> None:
        self.enabled = settings.enabled
        self._log = structlog.get_logger("shipway.tracing")
        self._exporter = _exporter(settings, environ) if settings.enabled else None
        self._queued: list[ReadableSpan] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        # The standard variable of OpenTelemetry's batch processor, in milliseconds.
        self._delay_s = float(environ.get("OTEL_BSP_SCHEDULE_DELAY") or 1000) / 1000
        self._sample_below = int(settings.sample_ratio * (1 << 64))
        self._resource = Resource.create({"service.name": settings.service_name})
        self._scope = InstrumentationScope("shipway")

    @property
    def exporting(self) -> bool:
        return self._exporter is not None

    def begin(self, traceparent: bytes | None, method: str, path: str) -> RequestTrace | None:
        if not self.enabled:
            return None
        parent = _TRACEPARENT.match(traceparent.decode("latin-1")) if traceparent else None
        if parent is not None and (
            parent.group(1) == _INVALID_TRACE or parent.group(2) == _INVALID_SPAN
        ):
            parent = None  # W3C: an all-zero id makes the header invalid; start a new trace
        # Trace and span ids need to be unique, not secret: the SDK draws them this way too.
        span_id = f"{random.getrandbits(64) or 1:016x}"
        if parent is None:
            trace_id, parent_span, sampled = f"{random.getrandbits(128) or 1:032x}", None, None
        else:
            trace_id, parent_span = parent.group(1), parent.group(2)
            sampled = bool(int(parent.group(3), 16) & 1)
        if self._exporter is None:
            return RequestTrace(trace_id, span_id, parent_span, bool(sampled))
        if sampled is None:  # a new trace: the ratio decides, as TraceIdRatioBased does
            sampled = int(trace_id, 16) & _TRACE_ID_LOW < self._sample_below
        return RequestTrace(trace_id, span_id, parent_span, sampled, recording=sampled)

    def end(self, request: RequestTrace, status: int, attributes: Attributes) -> None:
        """Build the request's span and its stage spans, and queue them for export."""
        if self._exporter is None or request.stages is None:
            return
        if len(self._queued) >= _MAX_QUEUED_SPANS:
            self.dropped += 1 + len(request.stages)  # the collector is not keeping up
            return
        out = self._queued
        trace_id = int(request.trace_id, 16)
        own = SpanContext(trace_id, int(request.span_id, 16), False, _SAMPLED)
        route = attributes.get("http.route")
        method = attributes.get("http.request.method", "")
        attributes["http.response.status_code"] = status
        for name, start, end, attrs in request.stages:
            out.append(
                ReadableSpan(
                    name,
                    context=SpanContext(trace_id, random.getrandbits(64) or 1, False, _SAMPLED),
                    parent=own,
                    resource=self._resource,
                    attributes=attrs,
                    kind=SpanKind.CLIENT if " " in name else SpanKind.INTERNAL,
                    status=_ERROR if "error.type" in attrs else _UNSET,
                    start_time=start,
                    end_time=end,
                    instrumentation_scope=self._scope,
                )
            )
        parent = None
        if request.parent_span_id is not None:
            parent = SpanContext(trace_id, int(request.parent_span_id, 16), True, _SAMPLED)
        out.append(
            ReadableSpan(
                f"{method} {route}" if route else method,
                context=own,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=_ERROR if status >= 500 else _UNSET,
                start_time=request.start_ns,
                end_time=time.time_ns(),
                instrumentation_scope=self._scope,
            )
        )

    async def start(self) -> None:
        if self._exporter is not None:
            self._task = asyncio.create_task(self._export_every_delay(), name="trace-export")

    async def stop(self) -> None:
        """Export what is still queued, then close the exporter."""
        if self._task is None or self._exporter is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._export()
        await asyncio.to_thread(self._exporter.shutdown)

    async def _export_every_delay(self) -> None:
        # One batch per delay, exported from a thread (an OTLP post may take a while); a
        # span queue instead of the SDK's BatchSpanProcessor, whose lock and wake-up per span
        # cost more than building the span.
        while True:
            await asyncio.sleep(self._delay_s)
            await self._export()

    async def _export(self) -> None:
        assert self._exporter is not None
        if self.dropped:
            self._log.warning("trace spans dropped: the exporter is behind", spans=self.dropped)
            self.dropped = 0
        batch, self._queued = self._queued, []
        if not batch:
            return
        try:
            result = await asyncio.to_thread(self._exporter.export, batch)
        except Exception as exc:  # noqa: BLE001 - a collector's fault must not stop the loop
            self._log.warning("trace export failed", error=repr(exc), spans=len(batch))
            return
        if result is not SpanExportResult.SUCCESS:
            self._log.warning("trace export failed", spans=len(batch))


class _Discard(SpanExporter):
    """Spans built and dropped: measures what tracing costs with no collector in the way."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _exporter(settings: TracingSettings, environ: Mapping[str, str]) -> SpanExporter | None:
    if settings.exporter == "discard":
        return _Discard()
    if settings.exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout is for commands' results
    if settings.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers: dict[str, str] = {}
    if settings.otlp_headers_env:
        raw = environ.get(settings.otlp_headers_env, "")
        for item in filter(None, (part.strip() for part in raw.split(","))):
            name, _, value = item.partition("=")
            headers[name.strip()] = value.strip()
    endpoint = settings.otlp_endpoint.rstrip("/") + "/v1/traces"
    structlog.get_logger("shipway.tracing").info(
        "exporting traces over OTLP/HTTP", endpoint=endpoint, sample_ratio=settings.sample_ratio
    )
    return OTLPSpanExporter(endpoint=endpoint, headers=headers or None, timeout=10)
