"""A local worker's replies (``delta`` … ``done``) shaped as OpenAI's chat answers.

The worker sends text per answer (``index`` 0 … n-1, sampled one after the other) and, at
the end, each answer's finish reason. ``AnswerShaper`` turns those into chunk deltas — plain
content, or, for a request with tools, a tool call's deltas (backends/tool_output.py) — and
``chunks``/``answer`` render them as ``chat.completion.chunk`` bodies or gather them into one
``chat.completion``. A finished tool call is ``finish_reason: "tool_calls"``; one cut short by
``max_tokens`` stays ``"length"``. Usage counts the prompt once and the tokens of every answer,
as OpenAI does for ``n``.
"""

from __future__ import annotations

from typing import Any

from shipway.backends.base import MEAN_LOGPROB
from shipway.backends.local_chat import LocalChat, chat_chunk
from shipway.backends.tool_output import ToolCallReader

__all__ = ["AnswerShaper", "gather", "usage"]


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class AnswerShaper:
    """One request's answers: worker messages in, (index, delta, logprobs, finish) out."""

    def __init__(self, plan: LocalChat) -> None:
        self._n = plan.n
        tagged = plan.tools.tagged if plan.tools is not None else False
        self._readers = (
            [ToolCallReader(tagged=tagged) for _ in range(plan.n)] if plan.tools else None
        )
        self._pending: dict[int, list[dict[str, Any]]] = {}  # logprobs not yet sent

    def opening(self) -> list[dict[str, Any]]:
        """The role chunks: at once for text; with tools, in each answer's first delta."""
        if self._readers is not None:
            return []
        return [chat_chunk({"role": "assistant", "content": ""}, index=i) for i in range(self._n)]

    def delta(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        index = int(message.get("index", 0))
        pending = self._pending.setdefault(index, [])
        pending.extend(message.get("logprobs") or ())
        if self._readers is None:
            deltas = [{"content": message["text"]}]
        else:
            deltas = self._readers[index].feed(message["text"])
        return [self._chunk(index, delta) for delta in deltas]

    def done(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The last deltas and the finish chunk of every answer."""
        finishes = [c["finish_reason"] for c in message.get("choices") or [message]]
        out: list[dict[str, Any]] = []
        for index in range(self._n):
            # A cancelled request stops early: its later answers never started.
            reason = finishes[index] if index < len(finishes) else "cancelled"
            if self._readers is not None:
                reader = self._readers[index]
                for delta in reader.finish():
                    out.append(self._chunk(index, delta))
                if reader.called and reason == "stop":
                    reason = "tool_calls"
            out.append(self._chunk(index, {}, finish_reason=reason))
        return out

    def _chunk(
        self, index: int, delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        logprobs = self._pending.pop(index, None)
        return chat_chunk(
            delta,
            finish_reason=finish_reason,
            logprobs={"content": logprobs, "refusal": None} if logprobs else None,
            index=index,
        )

    def usage_chunk(self, done: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage(done["prompt_tokens"], done["completion_tokens"]),
            MEAN_LOGPROB: done.get("mean_logprob"),
        }


def gather(chunks: list[dict[str, Any]], done: dict[str, Any], logprobs: bool) -> dict[str, Any]:
    """The ``chat.completion`` those chunks stream: one message per index."""
    messages: dict[int, dict[str, Any]] = {}
    entries: dict[int, list[dict[str, Any]]] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        index = choice["index"]
        message = messages.setdefault(
            index,
            {"role": "assistant", "content": None, "refusal": None, "annotations": []},
        )
        delta = choice["delta"]
        if delta.get("content") is not None:
            message["content"] = (message["content"] or "") + delta["content"]
        for call in delta.get("tool_calls") or ():
            calls = message.setdefault("tool_calls", [])
            if "id" in call:
                calls.append(
                    {"id": call["id"], "type": "function", "function": {**call["function"]}}
                )
            else:
                calls[-1]["function"]["arguments"] += call["function"]["arguments"]
        if choice["logprobs"]:
            entries.setdefault(index, []).extend(choice["logprobs"]["content"])
        if choice["finish_reason"] is not None:
            finishes[index] = choice["finish_reason"]
    choices = []
    for index in sorted(messages):
        message = messages[index]
        if message["content"] is None and "tool_calls" not in message:
            message["content"] = ""
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": {"content": entries.get(index, []), "refusal": None}
                if logprobs
                else None,
                "finish_reason": finishes.get(index, "cancelled"),
            }
        )
    return {
        "object": "chat.completion",
        "choices": choices,
        "usage": usage(done["prompt_tokens"], done["completion_tokens"]),
        MEAN_LOGPROB: done.get("mean_logprob"),
    }
