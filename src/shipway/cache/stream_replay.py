"""Streams and the cache: a streamed answer assembled for storing, a cached one replayed.

``StreamAssembler`` is fed the ``chat.completion.chunk`` dicts of a stream and gives the
``chat.completion`` they add up to (content, refusal, tool calls, logprobs and finish reason
per choice, so ``n`` > 1 works), or None while the stream is incomplete. ``replay_chunks``
turns a completion back into the chunks OpenAI would have streamed for it: per choice a
first chunk with the role, then the content (with its logprobs), the refusal, each tool
call (its id and name, then its arguments), and a chunk with the finish reason; last, with
``include_usage``, a chunk with ``choices: []`` and the usage. Assembling the replay of a
completion gives that completion back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamAssembler", "replay_chunks"]

# Fields every chunk of a stream repeats, copied from and to the completion.
_STAMP = ("id", "created", "model", "service_tier", "system_fingerprint")


@dataclass
class _ToolCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Choice:
    content: list[str] | None = None
    refusal: list[str] | None = None
    calls: dict[int, _ToolCall] = field(default_factory=dict)
    content_logprobs: list[Any] | None = None
    refusal_logprobs: list[Any] | None = None
    finish_reason: str | None = None

    def add(self, delta: Mapping[str, Any], logprobs: Mapping[str, Any] | None) -> None:
        if delta.get("content") is not None:
            self.content = [*(self.content or []), delta["content"]]
        if delta.get("refusal") is not None:
            self.refusal = [*(self.refusal or []), delta["refusal"]]
        for piece in delta.get("tool_calls") or ():
            index = piece.get("index", len(self.calls))
            call = self.calls.setdefault(index, _ToolCall())
            call.id = piece.get("id") or call.id
            function = piece.get("function") or {}
            call.name = function.get("name") or call.name
            if function.get("arguments"):
                call.arguments.append(function["arguments"])
        if logprobs:
            if logprobs.get("content") is not None:
                self.content_logprobs = [*(self.content_logprobs or []), *logprobs["content"]]
            if logprobs.get("refusal") is not None:
                self.refusal_logprobs = [*(self.refusal_logprobs or []), *logprobs["refusal"]]

    def result(self, index: int) -> dict[str, Any] | None:
        if self.finish_reason is None or any(
            c.id is None or c.name is None for c in self.calls.values()
        ):
            return None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.content is not None else None,
            "refusal": "".join(self.refusal) if self.refusal is not None else None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(self.calls.items())
            ]
        elif message["content"] is None and message["refusal"] is None:
            message["content"] = ""
        logprobs = None
        if self.content_logprobs is not None or self.refusal_logprobs is not None:
            logprobs = {"content": self.content_logprobs, "refusal": self.refusal_logprobs}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }


class StreamAssembler:
    """The completion a stream adds up to; ``choices``: how many the request asked (``n``)."""

    def __init__(self, *, choices: int = 1) -> None:
        self._expected = choices
        self._choices: dict[int, _Choice] = {}
        self._stamp: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> None:
        for name in _STAMP:
            if chunk.get(name) is not None:
                self._stamp.setdefault(name, chunk[name])
        if chunk.get("usage") is not None:
            self._usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or ():
            state = self._choices.setdefault(choice.get("index", 0), _Choice())
            state.add(choice.get("delta") or {}, choice.get("logprobs"))
            if choice.get("finish_reason") is not None:
                state.finish_reason = choice["finish_reason"]

    def completion(self, *, usage: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The ``chat.completion``, or None unless every choice finished and the usage is
        known (from the stream's usage chunk, else ``usage``)."""
        final_usage = self._usage if self._usage is not None else usage
        if final_usage is None or set(self._choices) != set(range(self._expected)):
            return None
        choices = [self._choices[i].result(i) for i in range(self._expected)]
        if any(choice is None for choice in choices):
            return None
        return {
            **self._stamp,
            "object": "chat.completion",
            "choices": choices,
            "usage": dict(final_usage),
        }


def replay_chunks(completion: Mapping[str, Any], *, include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` sequence a live stream of ``completion`` would send."""
    stamp = {k: completion[k] for k in _STAMP if completion.get(k) is not None}
    chunks: list[dict[str, Any]] = []

    def emit(
        index: int, delta: dict[str, Any], *, logprobs: Any = None, finish: Any = None
    ) -> None:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunks.append({**stamp, "object": "chat.completion.chunk", "choices": [choice]})

    for choice in completion.get("choices") or ():
        index, message = choice["index"], choice["message"]
        content, refusal = message.get("content"), message.get("refusal")
        logprobs = choice.get("logprobs")
        calls = message.get("tool_calls") or ()
        # As a live stream does: a tool-call-only answer opens with its role on the first
        # call's head; otherwise with the role and empty content.
        role: dict[str, Any] = {"role": "assistant", "content": "" if content is not None else None}
        if content is not None or refusal is not None or not calls:
            emit(index, role)
            role = {}
        if content:
            emit(index, {"content": content}, logprobs=logprobs)
            logprobs = None
        if refusal is not None:
            emit(index, {"refusal": refusal})
        for position, call in enumerate(calls):
            function = call["function"]
            head = {"index": position, "id": call["id"], "type": "function"}
            opening = {"name": function["name"], "arguments": ""}
            emit(index, {**role, "tool_calls": [{**head, "function": opening}]})
            role = {}
            if function["arguments"]:
                piece = {"index": position, "function": {"arguments": function["arguments"]}}
                emit(index, {"tool_calls": [piece]})
        emit(index, {}, logprobs=logprobs, finish=choice["finish_reason"])
    if include_usage and completion.get("usage") is not None:
        chunks.append(
            {
                **stamp,
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": completion["usage"],
            }
        )
    return chunks
