"""Input limits a request meets before any model work: answer length and control characters.

``capped_max_tokens`` applies the smaller of the model's ``max_tokens_limit`` and the key's
``max_tokens``: a request asking for more gets 400 (as OpenAI answers a ``max_tokens`` above
a model's limit), one asking for nothing gets the cap, so no request can hold a worker for
the model's whole context unless it is allowed to. The message count and body size are
checked earlier, by the HTTP layer (``server.max_messages``, ``server.max_body_bytes``).

``check_control_characters`` refuses C0 control characters (NUL, ESC, backspace …) other
than tab, newline and carriage return in any text a model will read: no client writes them
on purpose, they hide text from the people reading logs (terminal escapes) and they are a
common way to smuggle instructions past a human reviewer.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from shipway.backends.base import ChatRequest
from shipway.errors import InvalidRequest

__all__ = ["capped_max_tokens", "check_control_characters", "message_texts"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def capped_max_tokens(
    request: ChatRequest, model_limit: int | None, key_limit: int | None, model: str
) -> ChatRequest:
    limits = [limit for limit in (model_limit, key_limit) if limit is not None]
    if not limits:
        return request
    cap = min(limits)
    # Both spellings are checked: an upstream may honour whichever one Shipway did not read.
    asked = [
        (param, value)
        for param in ("max_completion_tokens", "max_tokens")
        if isinstance(value := request.body.get(param), int) and not isinstance(value, bool)
    ]
    for param, value in asked:
        if value > cap:
            who = "this key" if key_limit == cap else f"model {model!r}"
            raise InvalidRequest(
                f"{param} is too large: {value}. The most {who} may ask for is {cap} tokens.",
                param=param,
                code="invalid_value",
            )
    if asked or request.max_tokens is not None:
        return request
    return dataclasses.replace(request, max_tokens=cap, body={**request.body, "max_tokens": cap})


def message_texts(messages: Iterable[dict[str, Any]]) -> Iterable[tuple[int, str]]:
    """(message index, text) for every text a message carries: string content or text parts."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            yield index, content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield index, part["text"]


def check_control_characters(texts: Iterable[tuple[str, str]]) -> None:
    """``texts`` are (param, text) pairs; the first control character found gets a 400."""
    for param, text in texts:
        found = _CONTROL.search(text)
        if found is not None:
            raise InvalidRequest(
                f"Invalid value for '{param}': control character U+{ord(found[0]):04X} at "
                f"position {found.start()}; text may hold tab, newline and carriage return "
                "but no other control characters.",
                param=param,
                code="invalid_value",
            )
