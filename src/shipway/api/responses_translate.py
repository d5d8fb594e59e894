"""`POST /v1/responses` bodies in chat's words, for models served through chat completions.

    instructions                 → a system message, first
    input (a string)             → one user message
    input message items          → messages (input_text / output_text parts → text parts,
                                   input_image URLs → image_url parts)
    function_call items          → an assistant message's tool_calls (consecutive calls,
                                   and the text just before them, make one message)
    function_call_output items   → tool messages
    max_output_tokens            → max_tokens
    text.format                  → response_format
    tools (flat function tools)  → tools (nested under `function`)
    tool_choice                  → tool_choice (allowed_tools: the tools, filtered)
    include logprobs             → logprobs (+ top_logprobs)

What needs state this server does not keep yet (previous_response_id, conversation,
store: true, background, item references, stored prompts) and what chat cannot carry
(built-in tools, file inputs) is a 400 naming the parameter, never silently dropped. Fields
OpenAI's Responses API lacks are passed on to chat unchanged, as the chat route does: an
upstream gets its extensions, a local model names the one it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shipway.api.responses_body import STATELESS, ResponsesBody, TextParam, refuse_stateful
from shipway.backends.base import ChatRequest
from shipway.errors import InvalidRequest, UnsupportedParameter

__all__ = ["Translated", "responses_param", "translate"]


@dataclass(frozen=True, slots=True)
class Translated:
    """The chat request, and for each of its messages the Responses path it came from."""

    chat: ChatRequest
    sources: list[tuple[str, str | None]]


_TEXT_PARTS = frozenset({"input_text", "output_text"})
# Chat parameter paths as the Responses ones, by prefix (first match wins).
_RENAMED = [
    (re.compile(r"max_(completion_)?tokens\b"), "max_output_tokens"),
    (re.compile(r"response_format(\.json_schema)?\b"), "text.format"),
    (re.compile(r"(tools\[\d+\]|tool_choice)\.function\b"), r"\1"),
    (re.compile(r"verbosity\b"), "text.verbosity"),
    (re.compile(r"reasoning_effort\b"), "reasoning.effort"),
    (re.compile(r"logprobs\b"), "include"),
]
_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](?:\.content(.*)|.*)")


def translate(body: ResponsesBody) -> Translated:
    """The chat request for ``body``; 400 for what chat cannot carry or needs stored state."""
    refuse_stateful(body)
    messages, sources = _messages(body)
    chat_body: dict[str, Any] = {**(body.model_extra or {}), "model": body.model}
    chat_body["messages"] = messages
    if body.max_output_tokens is not None:
        chat_body["max_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if getattr(body, name) is not None:
            chat_body[name] = getattr(body, name)
    if body.tools:
        tools = _tools(body.tools)
        choice, allowed = _tool_choice(body.tool_choice)
        if allowed is not None:
            tools = [t for t in tools if t["function"]["name"] in allowed]
        chat_body["tools"] = tools
        if choice is not None:
            chat_body["tool_choice"] = choice
    elif body.tool_choice not in (None, "none", "auto"):
        raise InvalidRequest("`tool_choice` names a tool but `tools` is empty", param="tool_choice")
    text = body.text or TextParam()
    response_format = _response_format(text.format)
    if response_format is not None:
        chat_body["response_format"] = response_format
    if text.verbosity is not None:
        chat_body["verbosity"] = text.verbosity
    effort = (body.reasoning or {}).get("effort")
    if effort is not None:
        chat_body["reasoning_effort"] = effort
    logprobs = _wants_logprobs(body.include or [])
    if logprobs:
        chat_body["logprobs"] = True
        if body.top_logprobs:
            chat_body["top_logprobs"] = body.top_logprobs
    chat = ChatRequest(
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        logprobs=logprobs,
        top_logprobs=(body.top_logprobs or 0) if logprobs else 0,
        body=chat_body,
    )
    return Translated(chat, sources)


def responses_param(param: str | None, sources: list[tuple[str, str | None]]) -> str | None:
    """A chat parameter path (``messages[3].content``) as the Responses path it came from."""
    if param is None:
        return None
    found = _MESSAGE_PARAM.fullmatch(param)
    if found is not None:
        index = int(found[1])
        if index >= len(sources):
            return "input"
        base, field = sources[index]
        return base if field is None or found[2] is None else f"{base}.{field}{found[2]}"
    for prefix, name in _RENAMED:
        if prefix.match(param):
            return prefix.sub(name, param, count=1)
    return param


# -- input --------------------------------------------------------------------------------------
def _messages(body: ResponsesBody) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    messages: list[dict[str, Any]] = []
    sources: list[tuple[str, str | None]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
        sources.append(("instructions", None))
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        sources.append(("input", None))
    else:
        for i, item in enumerate(body.input):
            _add_item(messages, sources, item, f"input[{i}]")
    if not body.input:
        raise InvalidRequest("`input` must hold at least one message or item", param="input")
    return messages, sources


def _add_item(
    messages: list[dict[str, Any]],
    sources: list[tuple[str, str | None]],
    item: Any,
    param: str,
) -> None:
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{param}' must be an object (a message or an item)", param=param)
    kind = item.get("type")
    if kind in (None, "message") and "role" in item:
        role = item["role"]
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(
                f"Invalid value for '{param}.role': {role!r}; expected user, assistant, "
                "system or developer",
                param=f"{param}.role",
            )
        content = _content(item.get("content"), f"{param}.content", tool_output=False)
        # `developer` is `system` to every chat server; not all of them know the new name.
        messages.append({"role": "system" if role == "developer" else role, "content": content})
        sources.append((param, "content"))
    elif kind == "function_call":
        call = {
            "id": _string(item, "call_id", param),
            "type": "function",
            "function": {
                "name": _string(item, "name", param),
                "arguments": _string(item, "arguments", param),
            },
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            sources.append((param, None))
    elif kind == "function_call_output":
        call_id = _string(item, "call_id", param)
        output = _content(item.get("output"), f"{param}.output", tool_output=True)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        sources.append((param, "output"))
    elif kind == "item_reference" or (kind is None and "id" in item):
        raise UnsupportedParameter(f"item references need stored items; {STATELESS}", param=param)
    else:
        raise UnsupportedParameter(
            f"input item type {kind!r} cannot be served through chat completions; messages, "
            "function_call and function_call_output items can",
            param=f"{param}.type",
        )


def _content(content: Any, param: str, *, tool_output: bool) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{param}' must be a string or an array of content parts", param=param
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS or kind == "refusal":
            text = part.get("refusal" if kind == "refusal" else "text")
            if not isinstance(text, str):
                raise InvalidRequest(
                    f"'{param}[{j}]' needs its text as a string", param=f"{param}[{j}]"
                )
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and isinstance(part.get("image_url"), str) and not tool_output:
            image = {"url": part["image_url"], "detail": part.get("detail") or "auto"}
            parts.append({"type": "image_url", "image_url": image})
        else:
            what = f"content part type {kind!r}" if kind != "input_image" else "this image"
            raise UnsupportedParameter(
                f"{what} cannot be served through chat completions: send text, or an image "
                "by `image_url` in a message (file ids and files need the Files API)",
                param=f"{param}[{j}]",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _string(item: dict[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(
            f"Missing required parameter: '{param}.{name}'.", param=f"{param}.{name}"
        )
    return value


# -- tools, formats, state ---------------------------------------------------------------------
def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UnsupportedParameter(
                f"tool type {kind!r} is not supported here: only function tools "
                "(`type: function`) are; built-in tools run on OpenAI's own servers",
                param=f"tools[{i}].type",
            )
        function: dict[str, Any] = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> tuple[Any, set[str] | None]:
    """(chat tool_choice, names of the tools allowed, or None for all)."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice, None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, None
    if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
        names = {t.get("name") for t in choice.get("tools") or () if isinstance(t, dict)}
        return choice["mode"], {n for n in names if isinstance(n, str)}
    raise UnsupportedParameter(
        "tool_choice must be none, auto, required, a function ({type: function, name}) or "
        "allowed_tools over function tools",
        param="tool_choice",
    )


def _response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    kind = None if fmt is None else fmt.get("type")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(fmt.get("name"), str) or not isinstance(schema, dict):
            missing = "name" if not isinstance(fmt.get("name"), str) else "schema"
            raise InvalidRequest(
                f"Missing required parameter: 'text.format.{missing}'.",
                param=f"text.format.{missing}",
            )
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    raise InvalidRequest(
        f"text.format type {kind!r} is not one of text, json_schema, json_object",
        param="text.format.type",
    )


def _wants_logprobs(include: list[str]) -> bool:
    logprobs = False
    for i, name in enumerate(include):
        if name == "message.output_text.logprobs":
            logprobs = True
        elif name != "reasoning.encrypted_content":  # nothing reasons here: nothing to add
            raise UnsupportedParameter(
                f"include {name!r} is not available: it belongs to built-in tools, images or "
                "stored items; message.output_text.logprobs is",
                param=f"include[{i}]",
            )
    return logprobs
