"""A local model's constrained answer, read back as OpenAI message deltas as it is generated.

The grammar (``tool_calls.py``) makes a call ``{"name": "<name>", "arguments": {…}}``,
wrapped in ``<tool_call>…</tool_call>`` in ``auto`` mode, where text never starts with
``<``; so the first character tells a call from text. ``ToolCallReader.feed`` takes text as
the model writes it and returns deltas the way OpenAI streams them::

    {"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_…",
        "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}
    {"tool_calls": [{"index": 0, "function": {"arguments": "{\\"city\\": "}}]}
    …

Argument text is passed on as it comes, except a trailing ``}`` (and what may follow it,
spaces and the closing tag) that could be the end of the wrapper object rather than of the
arguments: it is held until more text shows which. ``finish`` settles it: the wrapper's end is
dropped when what remains is whole JSON; an answer cut short (``max_tokens``) keeps all its
text, so its arguments are as incomplete as OpenAI's are in that case. An answer that ended
before its call's name was complete is returned as content.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

from shipway.backends.tool_calls import CALL_CLOSE, CALL_OPEN

__all__ = ["ToolCallReader", "new_call_id"]

# Up to the arguments' opening brace (not consumed): spaces before it are the wrapper's.
_HEAD = re.compile(r'\s?\{\s?"name"\s?:\s?"([a-zA-Z0-9_-]{1,64})"\s?,\s?"arguments"\s?:\s?(?=\{)')


def new_call_id() -> str:
    """``call_`` and 24 random characters, as OpenAI's ids look."""
    return "call_" + secrets.token_hex(12)


class ToolCallReader:
    """One choice's text → content deltas, or one tool call's deltas."""

    def __init__(self, *, tagged: bool) -> None:
        self._tagged = tagged
        self._mode = "start"  # start → text | head → arguments
        self._buffer = ""
        self._sent = ""  # argument text passed on
        self.called = False  # a call's header has been sent

    def feed(self, text: str) -> list[dict[str, Any]]:
        self._buffer += text
        if self._mode == "start":
            if not self._buffer:
                return []
            if self._tagged and not self._buffer.startswith("<"):
                self._mode = "text"
                return self._text_delta(first=True)
            if self._tagged:
                if len(self._buffer) < len(CALL_OPEN):
                    return []
                self._buffer = self._buffer.removeprefix(CALL_OPEN)
            self._mode = "head"
        if self._mode == "text":
            return self._text_delta(first=False)
        if self._mode == "head":
            match = _HEAD.match(self._buffer)
            if match is None:
                return []
            self._buffer = self._buffer[match.end() :]
            self._mode = "arguments"
            self.called = True
            header = {
                "index": 0,
                "id": new_call_id(),
                "type": "function",
                "function": {"name": match.group(1), "arguments": ""},
            }
            deltas = [{"role": "assistant", "content": None, "tool_calls": [header]}]
            return deltas + self._arguments(self._releasable())
        return self._arguments(self._releasable())

    def finish(self) -> list[dict[str, Any]]:
        """What is left once generation ended."""
        rest, self._buffer = self._buffer, ""
        if self._mode == "arguments":
            # Without the wrapper's end, the arguments are whole JSON; if not (cut short by
            # max_tokens), they are passed on as they are, as incomplete as OpenAI's.
            whole = re.sub(r"\}\s?(" + re.escape(CALL_CLOSE) + r")?\s?$", "", rest, count=1)
            if _is_json(self._sent + whole):
                rest = whole.rstrip(" ")
            return self._arguments(rest)
        if self._mode == "text":
            return [{"content": rest}] if rest else []
        # Ended before a call's name was complete: the text is what the model wrote.
        prefix = CALL_OPEN if self._tagged and self._mode == "head" else ""
        text = prefix + rest
        return [{"role": "assistant", "content": text}] if text else []

    def _text_delta(self, *, first: bool) -> list[dict[str, Any]]:
        text, self._buffer = self._buffer, ""
        if first:
            return [{"role": "assistant", "content": text}]
        return [{"content": text}] if text else []

    def _releasable(self) -> str:
        """Argument text that cannot be the wrapper's end; the rest stays buffered.

        Trailing spaces wait too: the ones after the arguments' last brace are dropped.
        """
        cut = self._buffer.rfind("}")
        if cut < 0 or not _may_close(self._buffer[cut + 1 :], self._tagged):
            cut = len(self._buffer)
        cut = len(self._buffer[:cut].rstrip(" "))
        ready, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return ready

    def _arguments(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self._sent += text
        return [{"tool_calls": [{"index": 0, "function": {"arguments": text}}]}]


def _may_close(after: str, tagged: bool) -> bool:
    """Whether text after a ``}`` could still be the rest of the wrapper's ending."""
    tail = after.strip(" ")
    return not tail or (tagged and CALL_CLOSE.startswith(tail))


def _is_json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True
