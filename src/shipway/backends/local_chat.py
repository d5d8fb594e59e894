"""What an embedded chat model accepts, what its worker is sent, and the chunk shape.

Local models take text messages. A request that asks for something they cannot do (images,
audio, ``logit_bias``, a schema keyword their grammar cannot enforce …) gets a 400 that names
the parameter, instead of being silently ignored. Upstream backends skip this: their server
decides. What they can do beyond plain text is planned here: ``response_format`` (JSON, or a
JSON schema) and ``tools`` become a GBNF grammar (backends/json_schema_check.py,
json_grammar.py, tool_calls.py), tool turns in the history become text, and ``n`` answers are
sampled one after the other by the worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shipway.backends.base import ChatRequest
from shipway.backends.json_grammar import schema_rules
from shipway.backends.json_schema_check import check_schema
from shipway.backends.local_completion import COMPLETION_FIELDS, check_local_completion
from shipway.backends.tool_calls import (
    ToolPlan,
    plan_tools,
    render_assistant,
    render_tool_results,
)
from shipway.errors import InvalidRequest, UnsupportedParameter

__all__ = ["LocalChat", "chat_chunk", "plan_local_chat", "validate_local_chat"]

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
        "tools",
        "tool_choice",
        "parallel_tool_calls",  # one call per answer is a valid answer either way
    }
)
# Meaningless without tools, so accepted and ignored when tools are absent.
_TOOL_ADJACENT = frozenset({"tool_choice", "function_call", "parallel_tool_calls"})
# Known OpenAI features a local text model cannot honour when they are set.
_UNSUPPORTED = frozenset({"functions", "logit_bias", "audio", "prediction", "web_search_options"})
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class LocalChat:
    """A request as its worker runs it: text messages, a grammar or none, ``n`` answers."""

    messages: list[dict[str, str]]
    grammar: str | None = None
    tools: ToolPlan | None = None
    n: int = 1

    def wire(self, request: ChatRequest) -> dict[str, Any]:
        return {
            **request.to_wire(),
            "messages": self.messages,
            "grammar": self.grammar,
            "n": self.n,
        }


def validate_local_chat(request: ChatRequest) -> list[dict[str, str]]:
    """Reject what a local model cannot do; return the messages as plain text pairs."""
    return plan_local_chat(request).messages


def plan_local_chat(request: ChatRequest) -> LocalChat:
    """Reject what a local model cannot do; plan what it will be asked to do."""
    body = request.body
    if request.prompt is not None:  # a text completion has its own fields
        check_local_completion(body)
    honoured = _HONOURED if request.prompt is None else COMPLETION_FIELDS
    for key, value in body.items():
        if key in _UNSUPPORTED:
            if value:
                raise UnsupportedParameter(
                    f"`{key}` is not supported by this model (an embedded text model); "
                    "route the request to an upstream model that supports it",
                    param=key,
                )
        elif key not in honoured and key not in _TOOL_ADJACENT:
            raise UnsupportedParameter(f"Unrecognized request argument supplied: {key}", param=key)
    modalities = body.get("modalities")
    if modalities and list(modalities) != ["text"]:
        raise UnsupportedParameter("only the 'text' modality is supported", param="modalities")
    n = body.get("n") or 1
    if request.prompt is not None:
        return LocalChat([_text_message(i, m) for i, m in enumerate(request.messages)], n=n)
    text_schema = _response_schema(body.get("response_format"))
    tools = plan_tools(body, text_schema)
    messages = _messages(request.messages)
    if tools is not None:
        if messages and messages[0]["role"] == "system":
            first = messages[0]["content"]
            messages[0] = {"role": "system", "content": f"{first}\n\n{tools.system_text}"}
        else:
            messages.insert(0, {"role": "system", "content": tools.system_text})
        return LocalChat(messages, tools.grammar, tools, n)
    grammar = None if text_schema is None else schema_rules({"root": text_schema})
    return LocalChat(messages, grammar, None, n)


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """The checked schema a text answer must follow (``json_object``: any object)."""
    if not isinstance(response_format, dict) or response_format.get("type", "text") == "text":
        return None
    if response_format["type"] == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema")
    where = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise InvalidRequest(
            f"Invalid '{where}.name': 1-64 letters, digits, underscores or dashes.",
            param=f"{where}.name",
            code="invalid_value",
        )
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise InvalidRequest(
            f"Invalid '{where}.strict': a boolean.", param=f"{where}.strict", code="invalid_value"
        )
    if "schema" not in spec:
        # Local models enforce the schema (strict or not): there must be one.
        raise InvalidRequest(
            f"Missing required parameter: '{where}.schema' (a local model enforces it).",
            param=f"{where}.schema",
        )
    return check_schema(spec["schema"], f"{where}.schema")


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Text turns; tool calls and consecutive tool results written out (tool_calls.py)."""
    out: list[dict[str, str]] = []
    names: dict[Any, str | None] = {}  # tool_call_id → function name, for the results
    results: list[tuple[str | None, str]] = []
    for index, message in enumerate(messages):
        if message["role"] == "tool":
            text = _text_message(index, {**message, "role": "user"})["content"]
            results.append((names.get(message.get("tool_call_id")), text))
            continue
        if results:
            out.append({"role": "user", "content": render_tool_results(results)})
            results = []
        turn = _text_message(index, message)
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            turn["content"] = render_assistant(turn["content"], calls, index)
            for call in calls:
                function = call.get("function") or {}
                names[call.get("id")] = function.get("name")
        out.append(turn)
    if results:
        out.append({"role": "user", "content": render_tool_results(results)})
    return out


def _text_message(index: int, message: dict[str, Any]) -> dict[str, str]:
    role = message["role"]
    if role == "function" or message.get("function_call"):
        raise UnsupportedParameter(
            "legacy function messages are not supported by this model; use `tools`",
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
    index: int = 0,
) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
