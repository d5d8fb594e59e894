"""Chat answers as Responses: the Response object and the items in it.

    Response   output: a `message` item (output_text and/or refusal parts) and the
               `function_call` items; status `completed`, or `incomplete` with
               `incomplete_details.reason` when the answer hit max_output_tokens

``usage`` is left out of a Response still in progress rather than sent as null: OpenAI's
schema types it as an object (as for chat chunks). Streams: api/responses_events.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shipway.errors import ShipwayError

__all__ = [
    "INCOMPLETE",
    "ResponseHead",
    "call_item",
    "failure_events",
    "from_chat",
    "logprob",
    "message_item",
    "responses_usage",
    "text_part",
]

# Chat finish reasons that leave a response incomplete, and the reason OpenAI gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# A failed response's error.code is one of a fixed list (ResponseErrorCode in the spec).
_FAILED_CODES = {400: "invalid_prompt", 429: "rate_limit_exceeded"}


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What every Response object of one request carries: identity and the request's echo."""

    request_id: str
    model: str
    echo: dict[str, Any]
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def id(self) -> str:
        return f"resp_{self.request_id}"

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": None if incomplete is None else {"reason": incomplete},
            "model": self.model,
            "output": output,
            **self.echo,
        }
        if usage is not None:
            body["usage"] = usage
        return body


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def from_chat(head: ResponseHead, answer: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` body as the Response object."""
    choices = answer.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    incomplete = INCOMPLETE.get(choice.get("finish_reason") or "")
    status = "completed" if incomplete is None else "incomplete"
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if content or not message.get("refusal"):
        logprobs = (choice.get("logprobs") or {}).get("content") or ()
        parts.append(text_part(content or "", [logprob(entry) for entry in logprobs]))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    calls = message.get("tool_calls") or []
    output = []
    if content or message.get("refusal") or not calls:
        output.append(message_item(f"msg_{head.request_id}", status, parts))
    for k, call in enumerate(calls):
        function = call.get("function") or {}
        item = call_item(head, k, call.get("id"), function.get("name") or "", "completed")
        item["arguments"] = function.get("arguments") or ""
        output.append(item)
    return head.response(
        status, output, responses_usage(answer.get("usage")), incomplete=incomplete
    )


def failure_events(
    response: dict[str, Any], error: ShipwayError, sequence: int
) -> list[dict[str, Any]]:
    """``error``, then ``response.failed`` with ``response`` (as it stood) marked failed."""
    code = _FAILED_CODES.get(error.status, "server_error")
    failed = {**response, "status": "failed", "completed_at": None}
    failed["error"] = {"code": code, "message": error.message}
    return [
        {
            "type": "error",
            "sequence_number": sequence,
            "code": error.code,
            "message": error.message,
            "param": error.param,
        },
        {"type": "response.failed", "sequence_number": sequence + 1, "response": failed},
    ]


def message_item(item_id: str, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def call_item(
    head: ResponseHead, index: int, call_id: Any, name: str, status: str
) -> dict[str, Any]:
    return {
        "id": f"fc_{head.request_id}_{index}",
        "type": "function_call",
        "status": status,
        "call_id": call_id
        if isinstance(call_id, str) and call_id
        else f"call_{head.request_id}_{index}",
        "name": name,
        "arguments": "",
    }


def logprob(entry: dict[str, Any]) -> dict[str, Any]:
    """A chat logprob entry as the Responses one (which requires ``bytes``)."""
    token = str(entry.get("token", ""))
    return {
        "token": token,
        "logprob": entry.get("logprob", 0.0),
        "bytes": entry.get("bytes") or list(token.encode()),
        "top_logprobs": [
            {
                "token": str(top.get("token", "")),
                "logprob": top.get("logprob", 0.0),
                "bytes": top.get("bytes") or list(str(top.get("token", "")).encode()),
            }
            for top in entry.get("top_logprobs") or ()
        ],
    }
