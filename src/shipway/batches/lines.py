"""A batch input file read and checked: one request per JSONL line, or a 400 naming the line.

Each line is ``{"custom_id", "method": "POST", "url", "body"}`` with ``url`` the batch's
endpoint and a ``body`` as that endpoint takes it. Everything that would make every run of a
line fail the same way is refused when the batch is created, so a client learns it at once
rather than from an error file a day later: bad JSON, a wrong method or url, a missing or
repeated ``custom_id``, a model the caller cannot use, streaming, too many lines. What only
the model can judge (the body's other fields) is answered per line in the error file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from shipway.errors import InvalidRequest
from shipway.store.batches import NewLine

__all__ = ["ENDPOINTS", "ModelCheck", "parse_input"]

# What each endpoint a batch may name needs of a model.
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "chat",
    "/v1/embeddings": "embeddings",
}
_MAX_CUSTOM_ID = 512

# The reason a model cannot serve the batch's endpoint for this caller, or None if it can.
ModelCheck = Callable[[str, str], str | None]


def _error(number: int, message: str) -> InvalidRequest:
    return InvalidRequest(f"line {number} of the input file: {message}", param="input_file_id")


def parse_input(
    content: bytes, *, endpoint: str, max_lines: int, check_model: ModelCheck
) -> list[NewLine]:
    """The requests of ``content`` (line numbers from 1, blank lines skipped)."""
    capability = ENDPOINTS[endpoint]
    lines: list[NewLine] = []
    seen: dict[str, int] = {}
    for number, raw in _numbered(content):
        if len(lines) >= max_lines:
            raise InvalidRequest(
                f"the input file has more than {max_lines} requests (batches.max_lines); "
                "split it into several batches",
                param="input_file_id",
            )
        request = _request(number, raw)
        custom_id = _custom_id(number, request)
        if custom_id in seen:
            raise _error(
                number,
                f"custom_id {custom_id!r} is used by line {seen[custom_id]} too; each request "
                "needs its own custom_id",
            )
        seen[custom_id] = number
        body = _body(number, request, endpoint)
        model = body["model"]
        reason = check_model(model, capability)
        if reason is not None:
            raise _error(number, reason)
        lines.append(NewLine(number, custom_id, model, body))
    if not lines:
        raise InvalidRequest(
            "the input file has no requests: write one JSON object per line", param="input_file_id"
        )
    return lines


def _numbered(content: bytes) -> Iterator[tuple[int, bytes]]:
    for index, raw in enumerate(content.split(b"\n")):
        if raw.strip():
            yield index + 1, raw


def _request(number: int, raw: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(number, "not valid UTF-8") from None
        raise _error(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(request, dict):
        raise _error(number, f"expected a JSON object, got {type(request).__name__}")
    extra = sorted(set(request) - {"custom_id", "method", "url", "body"})
    if extra:
        raise _error(
            number,
            f"unknown field(s) {', '.join(extra)}; a line has custom_id, method, url and body",
        )
    return request


def _custom_id(number: int, request: dict[str, Any]) -> str:
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _error(number, "custom_id is missing or not a non-empty string")
    if len(custom_id) > _MAX_CUSTOM_ID:
        raise _error(number, f"custom_id is longer than {_MAX_CUSTOM_ID} characters")
    return custom_id


def _body(number: int, request: dict[str, Any], endpoint: str) -> dict[str, Any]:
    if request.get("method") != "POST":
        raise _error(number, f'method must be "POST", not {request.get("method")!r}')
    if request.get("url") != endpoint:
        raise _error(
            number,
            f"url {request.get('url')!r} is not the batch's endpoint {endpoint!r}; every line "
            "of a batch goes to its endpoint",
        )
    body = request.get("body")
    if not isinstance(body, dict):
        raise _error(number, "body is missing or not a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _error(number, "body.model is missing or not a string")
    if body.get("stream"):
        raise _error(number, "body.stream is not supported in a batch; remove it")
    return body
