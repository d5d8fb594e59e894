"""What an embedded chat model accepts, and the chunk shape it answers in.

Local models take text messages only. A request that asks for something they cannot do
(``n`` > 1, tools, images, audio, JSON schemas …) gets a 400 that names the parameter,
instead of being silently ignored. Upstream backends skip this: their server decides.
"""

from __future__ import annotations

from typing import Any

from shipway.backends.base import ChatRequest
from shipway.errors import UnsupportedParameter

__all__ = ["chat_chunk", "validate_local_chat"]

# Fields the embedded models honour, or that are bookkeeping only.
_HONOURED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "ignore_eos",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "n",
        "user",
        "frequency_penalty",
        "presence_penalty",
        "metadata",
        "store",
        "timeout",
        "response_format",
        "service_tier",
        "modalities",
        "reasoning_effort",
    }
)
# Meaningless without tools, so accepted and ignored when tools are absent.
_TOOL_ADJACENT = frozenset({"tool_choice", "function_call", "parallel_tool_calls"})
# Known OpenAI features a local text model cannot honour when they are set.
_UNSUPPORTED = frozenset(
    {"tools", "functions", "logit_bias", "audio", "prediction", "web_search_options"}
)


def validate_local_chat(request: ChatRequest) -> list[dict[str, str]]:
    """Reject what a local model cannot do; return the messages as plain text pairs."""
    body = request.body
    for key, value in body.items():
        if key in _UNSUPPORTED:
            if value:
                raise UnsupportedParameter(
                    f"`{key}` is not supported by this model (an embedded text model); "
                    "route the request to an upstream model that supports it",
                    param=key,
                )
        elif key not in _HONOURED and key not in _TOOL_ADJACENT:
            raise UnsupportedParameter(f"Unrecognized request argument supplied: {key}", param=key)
    if (body.get("n") or 1) > 1:
        raise UnsupportedParameter(
            "`n` greater than 1 is not supported by this model; send n separate requests",
            param="n",
        )
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise UnsupportedParameter(
            f"response_format type {response_format.get('type')!r} is not supported by this "
            "model; only 'text'",
            param="response_format",
        )
    modalities = body.get("modalities")
    if modalities and list(modalities) != ["text"]:
        raise UnsupportedParameter("only the 'text' modality is supported", param="modalities")
    return [_text_message(i, m) for i, m in enumerate(request.messages)]


def _text_message(index: int, message: dict[str, Any]) -> dict[str, str]:
    role = message["role"]
    if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
        raise UnsupportedParameter(
            "tool and function messages are not supported by this model",
            param=f"messages[{index}]",
        )
    if role == "developer":
        role = "system"
    content = message.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        pieces = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                raise UnsupportedParameter(
                    f"content part type {part.get('type')!r} is not supported by this model "
                    "(text only)",
                    param=f"messages[{index}].content[{j}]",
                )
            pieces.append(part.get("text", ""))
        text = "".join(pieces)
    return {"role": role, "content": text}


def chat_chunk(
    delta: dict[str, Any],
    *,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
