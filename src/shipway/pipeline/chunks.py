"""What a stream chunk carries: whether it holds output (for the hold, TTFT and retries)."""

from __future__ import annotations

from typing import Any

__all__ = ["carries_output"]

# Responses stream events that carry output, for the stream's hold and its first-token time.
_RESPONSES_OUTPUT = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.output_item.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)


def carries_output(chunk: dict[str, Any]) -> bool:
    """A stream chunk with generated content, a finish reason or usage (not just a role).

    Chat chunks carry content in a delta; an upstream's text completion chunks in ``text``.
    """
    if chunk.get("type") in _RESPONSES_OUTPUT:  # a Responses event (forwarded as sent)
        return True
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or delta.get("content") or delta.get("tool_calls"):
            return True
        if choice.get("text"):
            return True
    return bool(chunk.get("usage"))
