"""A model's generation defaults (``models.<alias>.defaults``) filled into a chat request.

A default applies only to a field the client left out or sent as null; a value it sent,
even an empty ``stop`` list or ``max_tokens: 0``, is its choice. Each default goes into the
typed request (what a local worker reads) and into the forwarded body (what an upstream
reads), so both kinds of backend sample the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from shipway.backends.base import ChatRequest
from shipway.config import GenerationDefaults

__all__ = ["apply_defaults"]

_SAMPLING = ("temperature", "top_p", "stop", "seed", "frequency_penalty", "presence_penalty")


def apply_defaults(
    request: ChatRequest, defaults: GenerationDefaults, key_max_tokens: int | None = None
) -> ChatRequest:
    """``request`` with ``defaults`` in every field its body omits.

    ``key_max_tokens`` is the calling key's cap: the default answer length is lowered to it,
    because the input-limits stage refuses a ``max_tokens`` above the cap and the client,
    which asked for none, must not get a 400 for a number it never sent.
    """
    body = request.body
    filled: dict[str, Any] = {}
    for name in _SAMPLING:
        value = getattr(defaults, name)
        if value is not None and body.get(name) is None:
            filled[name] = list(value) if name == "stop" else value
    asked_length = (
        body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    )
    if defaults.max_tokens is not None and not asked_length:
        caps = [c for c in (defaults.max_tokens, key_max_tokens) if c is not None]
        filled["max_tokens"] = min(caps)
    if not filled:
        return request
    return dataclasses.replace(request, **filled, body={**body, **filled})
