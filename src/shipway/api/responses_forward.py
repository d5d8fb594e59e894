"""`/v1/responses` forwarded as sent, to an upstream that speaks it (``responses_api: true``).

The pipeline's stages read a chat view of the request — the text of the instructions, of
every message, function call and tool output — for the input limits, the rate limit and the
guards; the dispatch then sends the client's own body, with:

- the model's defaults (temperature, top_p, length) and the max_output_tokens cap filled in
  where the body has none, as for chat;
- each text the PII guard redacted replaced by its redaction, and the placeholders put back
  into the answer: every output text and argument of a Response, and for a stream the
  deltas (a placeholder split across deltas is held back until complete), the done events
  and the final response;
- the alias, not the upstream's model name, in every Response the client sees.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any

from shipway.backends.base import Backend, ChatRequest
from shipway.backends.openai_http import OpenAIHTTPBackend
from shipway.security.guard_stage import ChatGuarding
from shipway.security.pii import StreamRestorer, restore

__all__ = ["Forwarding"]

# (chat body field the defaults and the cap fill in, its Responses name)
_FILLED = (("max_tokens", "max_output_tokens"), ("temperature", "temperature"), ("top_p", "top_p"))
# The done events that end a text streamed in deltas.
_TEXT_DONE = frozenset(
    {
        "response.output_text.done",
        "response.refusal.done",
        "response.function_call_arguments.done",
    }
)


class Forwarding:
    """One forwarded request: its chat view for the stages, and the dispatch that sends it."""

    def __init__(self, raw: dict[str, Any], alias: str) -> None:
        self.raw = raw
        self.alias = alias
        messages, self.sources = _view(raw)
        length = raw.get("max_output_tokens")
        length = length if isinstance(length, int) and not isinstance(length, bool) else None
        body: dict[str, Any] = {"model": alias, "messages": messages}
        if length is not None:
            body["max_tokens"] = length  # so the input-limits stage checks it against the cap
        self.chat = ChatRequest(messages=messages, max_tokens=length, body=body)

    def body(self, guarding: ChatGuarding) -> dict[str, Any]:
        """The body to send: the client's, with defaults, the cap and redactions applied."""
        body = dict(self.raw)
        sent = guarding.request.body
        for chat_name, name in _FILLED:
            if body.get(name) is None and sent.get(chat_name) is not None:
                body[name] = sent[chat_name]
        if guarding.mapping:  # the PII guard redacted: the same texts, redacted, go upstream
            pairs = zip(_texts(self.chat.messages), _texts(guarding.request.messages), strict=True)
            swap = {old: new for old, new in pairs if old != new}
            body = _swapped(body, swap)
        return body

    async def send(self, backend: Backend, guarding: ChatGuarding) -> dict[str, Any]:
        answer = await _upstream(backend).respond(self.body(guarding))
        if guarding.mapping:
            answer = _restore_response(answer, guarding.mapping)
        answer["model"] = self.alias
        return answer

    async def stream(
        self, backend: Backend, guarding: ChatGuarding
    ) -> AsyncGenerator[dict[str, Any], None]:
        restorer = _EventRestorer(guarding.mapping)
        events = _upstream(backend).stream_response(self.body(guarding))
        try:
            async for event in events:
                if isinstance(event.get("response"), dict):
                    event["response"]["model"] = self.alias
                for out in restorer.feed(event):
                    yield out
        finally:
            await events.aclose()


def _upstream(backend: Backend) -> OpenAIHTTPBackend:
    # The route forwards only for runners whose upstream has `responses_api`.
    assert isinstance(backend, OpenAIHTTPBackend), "forwarding needs an upstream backend"
    return backend


# -- the chat view ------------------------------------------------------------------------------
def _view(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    """Messages holding every text of the request (nothing else: the upstream validates)."""
    messages: list[dict[str, Any]] = []
    sources: list[tuple[str, str | None]] = []
    if isinstance(raw.get("instructions"), str):
        messages.append({"role": "system", "content": raw["instructions"]})
        sources.append(("instructions", None))
    items = raw.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        sources.append(("input", None))
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        kind, role = item.get("type"), item.get("role")
        if kind == "function_call" and isinstance(item.get("arguments"), str):
            call = {"type": "function", "function": {"arguments": item["arguments"]}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            sources.append((f"input[{i}]", None))
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _parts(item.get("output"))})
            sources.append((f"input[{i}]", "output"))
        elif kind in (None, "message") and isinstance(role, str):
            role = role if role in ("user", "assistant") else "system"
            messages.append({"role": role, "content": _parts(item.get("content"))})
            sources.append((f"input[{i}]", "content"))
    return messages, sources


def _parts(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else ()
    return [
        {"type": "text", "text": part["text"]}
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    ]


def _texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    """Every text of the view, in order (the guard's redaction keeps the structure)."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            yield content
        for part in content if isinstance(content, list) else ():
            yield part["text"]
        for call in message.get("tool_calls") or ():
            yield call["function"]["arguments"]


def _swapped(body: dict[str, Any], swap: Mapping[str, str]) -> dict[str, Any]:
    """``body`` with each text of its instructions and input found in ``swap`` replaced."""

    def text(value: Any) -> Any:
        if isinstance(value, str):
            return swap.get(value, value)
        if isinstance(value, list):  # content parts
            return [
                {**p, "text": swap.get(p["text"], p["text"])}
                if isinstance(p, dict) and isinstance(p.get("text"), str)
                else p
                for p in value
            ]
        return value

    out = {**body, "instructions": text(body.get("instructions"))}
    if "instructions" not in body:
        del out["instructions"]
    items = body.get("input")
    if isinstance(items, str):
        out["input"] = text(items)
    elif isinstance(items, list):
        out["input"] = [
            {k: text(v) if k in ("content", "output", "arguments") else v for k, v in item.items()}
            if isinstance(item, dict)
            else item
            for item in items
        ]
    return out


# -- restoring the answer -----------------------------------------------------------------------
def _restore_item(item: Any, mapping: Mapping[str, str]) -> Any:
    if not isinstance(item, dict):
        return item
    if isinstance(item.get("arguments"), str):
        return {**item, "arguments": restore(item["arguments"], mapping)}
    if isinstance(item.get("content"), list):
        return {**item, "content": [_restore_part(p, mapping) for p in item["content"]]}
    return item


def _restore_part(part: Any, mapping: Mapping[str, str]) -> Any:
    if not isinstance(part, dict):
        return part
    for key in ("text", "refusal"):
        if isinstance(part.get(key), str):
            return {**part, key: restore(part[key], mapping)}
    return part


def _restore_response(response: dict[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    output = response.get("output")
    if not isinstance(output, list):
        return response
    return {**response, "output": [_restore_item(item, mapping) for item in output]}


class _EventRestorer:
    """Placeholders back into a stream of Responses events (events pass as they are when
    nothing was redacted). Deltas go through a ``StreamRestorer`` per text; what one still
    holds when its text is done goes out as one more delta, so sequence numbers are given
    afresh."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = mapping
        self._open: dict[tuple[Any, ...], StreamRestorer] = {}
        self._sequence = 0

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if not self._mapping:
            return [event]
        kind = str(event.get("type"))
        key = (event.get("item_id"), event.get("content_index"))
        out = [event]
        if kind.endswith(".delta") and isinstance(event.get("delta"), str):
            restorer = self._open.setdefault(key, StreamRestorer(self._mapping))
            out = [{**event, "delta": restorer.feed(event["delta"])}]
        elif kind.endswith(".done"):
            held_by = self._open.pop(key, None) if kind in _TEXT_DONE else None
            held = held_by.flush() if held_by is not None else ""
            delta = {k: v for k, v in event.items() if k not in ("text", "arguments", "refusal")}
            out = [{**delta, "type": kind[:-5] + ".delta", "delta": held}] if held else []
            done = {**event}
            for name in ("text", "arguments", "refusal"):
                if isinstance(done.get(name), str):
                    done[name] = restore(done[name], self._mapping)
            if "part" in done:
                done["part"] = _restore_part(done["part"], self._mapping)
            if "item" in done:
                done["item"] = _restore_item(done["item"], self._mapping)
            out.append(done)
        elif isinstance(event.get("response"), dict):
            out = [{**event, "response": _restore_response(event["response"], self._mapping)}]
        for item in out:
            item["sequence_number"] = self._sequence
            self._sequence += 1
        return out
