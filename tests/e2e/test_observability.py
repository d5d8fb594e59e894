"""Traces, cost, confidence and metrics, through a real server, its real embedded chat model,
a fake upstream and an OTLP receiver started by the test."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.servers import Server, shipway_server

CHAT = "smollm2-135m"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PRICE = {"input": 2.0, "output": 8.0}  # per million tokens


@pytest.fixture(scope="module")
def traces() -> Iterator[OtlpReceiver]:
    yield from otlp_receiver()


@pytest.fixture(scope="module")
def gateway(upstream: Server, traces: OtlpReceiver) -> Iterator[Server]:
    def up(name: str) -> dict[str, Any]:
        return {
            "backend": "openai",
            "base_url": upstream.base + "/v1",
            "upstream_model": name,
            "price": PRICE,
        }

    config = {
        "models": {
            "up": up("echo"),
            "up-500": up("fail-500"),
            CHAT: {"backend": "llamacpp", "price": {"input": 0.1, "output": 0.2}},
        },
        "telemetry": {"tracing": {"otlp_endpoint": traces.endpoint}, "currency": "EUR"},
    }
    srv = shipway_server(config, env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base + "/v1", api_key="x", max_retries=0, timeout=60)


def _wait_for(probe: Callable[[], Any], what: str, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _access_lines(gateway: Server) -> list[dict[str, Any]]:
    lines = []
    for line in gateway.log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"event":"request"' in line.replace(" ", ""):
            lines.append(json.loads(line))
    return lines


def _line_for(gateway: Server, request_id: str) -> dict[str, Any]:
    def probe() -> list[dict[str, Any]]:
        return [x for x in _access_lines(gateway) if x.get("request_id") == request_id]

    found = _wait_for(probe, f"the access line of {request_id}")
    assert len(found) == 1, found
    return found[0]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _spans(traces: OtlpReceiver, trace_id: str, count: int) -> list[ReceivedSpan]:
    return _wait_for(
        lambda: s if len(s := traces.of_trace(trace_id)) >= count else None,
        f"{count} spans of trace {trace_id}",
    )


def test_client_traceparent_is_continued_with_a_span_per_stage(
    client: openai.OpenAI, gateway: Server, traces: OtlpReceiver
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="up",
        messages=[{"role": "user", "content": "trace me"}],
        extra_headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )
    returned = raw.headers["traceparent"]
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", returned)
    assert match and match.group(1) == CLIENT_TRACE and match.group(2) != CLIENT_SPAN
    server_span_id = match.group(2)

    spans = _spans(traces, CLIENT_TRACE, 5)
    by_name = {s.name: s for s in spans}
    root = by_name["POST /v1/chat/completions"]
    assert root.span_id == server_span_id
    assert root.parent_span_id == CLIENT_SPAN  # the client's span is the parent
    assert root.attributes["gen_ai.request.model"] == "up"
    assert root.attributes["http.response.status_code"] == 200
    assert {"rate_limit", "guard", "queue", "chat up"} <= set(by_name)
    for name in ("rate_limit", "guard", "queue", "chat up"):
        child = by_name[name]
        assert child.parent_span_id == root.span_id, name
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    model_span = by_name["chat up"]
    assert model_span.attributes["gen_ai.operation.name"] == "chat"
    assert model_span.attributes["gen_ai.request.model"] == "up"
    assert model_span.attributes["gen_ai.usage.input_tokens"] == 2
    assert model_span.attributes["gen_ai.usage.output_tokens"] == 3
    assert model_span.attributes["gen_ai.response.finish_reasons"] == ["stop"]

    line = _line_for(gateway, raw.headers["x-request-id"])
    assert line["trace_id"] == CLIENT_TRACE


def test_a_request_without_traceparent_starts_a_trace_and_streams_are_traced(
    client: openai.OpenAI, gateway: Server, traces: OtlpReceiver
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="up",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        trace_id = response.headers["traceparent"].split("-")[1]
        chunks = list(response.parse())
    assert chunks[-1].usage is not None
    spans = _spans(traces, trace_id, 5)
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert root.parent_span_id == ""
    model_span = next(s for s in spans if s.name == "chat up")
    assert model_span.parent_span_id == root.span_id
    assert model_span.attributes["gen_ai.usage.output_tokens"] == 4
    assert model_span.end_ns <= root.end_ns


def test_a_failed_upstream_call_is_an_error_span_and_counted_by_kind(
    client: openai.OpenAI, gateway: Server, traces: OtlpReceiver, http: httpx.Client
) -> None:
    text = http.get(gateway.base + "/metrics").text
    before = _metric(text, "shipway_upstream_errors_total")
    failed_before = _metric(text, "shipway_requests_total", model="up-500", status="502")
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.with_raw_response.create(
            model="up-500", messages=[{"role": "user", "content": "x"}]
        )
    trace_id = failed.value.response.headers["traceparent"].split("-")[1]
    spans = _spans(traces, trace_id, 4)
    model_span = next(s for s in spans if s.name == "chat up-500")
    assert model_span.status_code == 2  # STATUS_CODE_ERROR
    assert model_span.attributes["error.type"] == "upstream_error"
    root = next(s for s in spans if s.name == "POST /v1/chat/completions")
    assert root.status_code == 2 and root.attributes["http.response.status_code"] == 502
    text = http.get(gateway.base + "/metrics").text
    assert (
        _metric(text, "shipway_upstream_errors_total", model="up-500", kind="server_error")
        == before + 1
    )
    assert _metric(text, "shipway_requests_total", model="up-500", status="502") == (
        failed_before + 1
    )


def test_latency_histogram_buckets_move(
    client: openai.OpenAI, gateway: Server, http: httpx.Client
) -> None:
    name = "shipway_request_duration_seconds_bucket"
    labels = {"model": "up", "endpoint": "chat.completions"}
    text = http.get(gateway.base + "/metrics").text
    fast, slowest = (
        _metric(text, name, le="1.0", **labels),
        _metric(text, name, le="+Inf", **labels),
    )
    for _ in range(3):
        client.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}])
    text = http.get(gateway.base + "/metrics").text
    # A fake upstream answers in milliseconds: every call lands in the 1 s bucket and below.
    assert _metric(text, name, le="1.0", **labels) == fast + 3
    assert _metric(text, name, le="+Inf", **labels) == slowest + 3
    assert _metric(text, name, le="0.005", **labels) <= fast + 3


def test_cost_is_in_the_log_the_metrics_and_usage_only_when_asked(
    client: openai.OpenAI, gateway: Server, http: httpx.Client
) -> None:
    cost_before = _metric(
        http.get(gateway.base + "/metrics").text, "shipway_cost_total", model="up"
    )
    plain = client.chat.completions.with_raw_response.create(
        model="up", messages=[{"role": "user", "content": "what does this cost"}]
    )
    reply = plain.parse()
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    assert "cost" not in reply.usage.model_dump()  # not asked: OpenAI's exact shape
    expected = (4 * PRICE["input"] + 5 * PRICE["output"]) / 1_000_000  # "echo: " + 4 words
    line = _line_for(gateway, plain.headers["x-request-id"])
    assert line["cost"] == pytest.approx(expected)
    assert line["confidence"] is None  # an upstream gives no confidence

    asked = client.chat.completions.create(
        model="up",
        messages=[{"role": "user", "content": "what does this cost"}],
        extra_headers={"x-shipway-include-cost": "true"},
    )
    assert asked.usage is not None
    cost = asked.usage.model_dump()["cost"]
    assert cost["currency"] == "EUR"
    assert cost["total"] == pytest.approx(expected)
    assert cost["input"] == pytest.approx(4 * PRICE["input"] / 1_000_000)

    stream = client.chat.completions.create(
        model="up",
        messages=[{"role": "user", "content": "what does this cost"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-shipway-include-cost": "1"},
    )
    last = list(stream)[-1]
    assert last.usage is not None
    assert last.usage.model_dump()["cost"]["total"] == pytest.approx(expected)

    text = http.get(gateway.base + "/metrics").text
    assert _metric(text, "shipway_cost_total", model="up") == pytest.approx(
        cost_before + 3 * expected
    )


def test_local_chat_has_a_confidence_in_the_log_and_histogram(
    client: openai.OpenAI, gateway: Server, http: httpx.Client
) -> None:
    count = "shipway_answer_negative_mean_logprob_count"
    before = _metric(http.get(gateway.base + "/metrics").text, count, model=CHAT)
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
    )
    reply = raw.parse()
    assert reply.choices[0].logprobs is None  # not asked for, not sent
    line = _line_for(gateway, raw.headers["x-request-id"])
    assert isinstance(line["confidence"], float)
    assert -20 < line["confidence"] <= 0
    assert line["cost"] > 0  # the local model has a price too
    text = http.get(gateway.base + "/metrics").text
    assert _metric(text, count, model=CHAT) == before + 1
    # The time per output token and the inference time (without the queue wait) moved too.
    assert _metric(text, "shipway_time_per_output_token_seconds_count", model=CHAT) >= 1
    assert _metric(text, "shipway_inference_duration_seconds_count", model=CHAT) >= 1


def test_confidence_matches_the_logprobs_the_client_can_ask_for(
    client: openai.OpenAI, gateway: Server
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
    )
    reply = raw.parse()
    assert reply.choices[0].logprobs and reply.choices[0].logprobs.content
    values = [t.logprob for t in reply.choices[0].logprobs.content]
    line = _line_for(gateway, raw.headers["x-request-id"])
    assert line["confidence"] == pytest.approx(sum(values) / len(values), abs=1e-3)


def test_engine_and_process_metrics(gateway: Server, http: httpx.Client) -> None:
    text = http.get(gateway.base + "/metrics").text
    assert _metric(text, "shipway_model_ready", model=CHAT) == 1
    assert _metric(text, "shipway_slots", model=CHAT) == 1
    assert _metric(text, "shipway_slots", model="up") == 64
    assert _metric(text, "shipway_worker_resident_memory_bytes", model=CHAT) > 10_000_000
    assert _metric(text, "process_resident_memory_bytes") > 10_000_000
    assert "process_cpu_seconds_total" in text
    # Label values stay bounded: a model nobody serves is never a label.
    http.post(gateway.base + "/v1/chat/completions", json={"model": "no-such", "messages": []})
    assert "no-such" not in http.get(gateway.base + "/metrics").text
