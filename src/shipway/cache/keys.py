"""Cache keys: which requests may be answered from the cache, and under which key.

A key hashes everything that changes the answer: the caller's scope (a team, or a key id
for a caller without one), the model and its version, every body field except those in
``IGNORED_FIELDS``, and the messages, all as canonical JSON (orjson, sorted keys).

The semantic cache matches on the *last user message* only, and only inside a
``partition`` that hashes everything else (scope, model, version, parameters, every earlier
message): a paraphrased question hits, but a different system prompt, history, ``tools`` or
``max_tokens`` never does. Embedding the whole conversation instead was measured to fail
with all-MiniLM-L6-v2: with a shared system line, "What is 2+2?" and "What is 2+3?" score
0.946, above the paraphrase "What is the capital of France?" / "Tell me the capital city of
France." (see tests/unit/test_response_cache.py for the real-model check).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from shipway.cache.policy import CachePolicy

__all__ = ["IGNORED_FIELDS", "CacheKey", "build_key", "client_bypass", "deterministic"]

# Body fields that never change the answer's content: delivery, bookkeeping, routing hints.
IGNORED_FIELDS = frozenset(
    {
        "model",  # keyed separately, as the alias actually served
        "messages",  # keyed separately (see the module docstring)
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "timeout",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
    }
)
# Written either as 0 or 0.0 by clients; the same request must give the same key.
_FLOAT_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
# Values that mean the same as leaving the field out.
_NEUTRAL = {"n": 1, "logprobs": False}
# all-MiniLM-L6-v2 reads 256 word pieces; a longer question would be refused by the
# embedding model (or, truncated, match too loosely), so it is cached exactly only.
SEMANTIC_MAX_CHARS = 1000


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a request's answer is cached. ``text`` is None when it cannot match semantically."""

    model: str
    scope: str
    exact: str
    partition: str
    text: str | None
    policy: CachePolicy
    # Filled by a semantic lookup's miss so that storing the answer does not embed again.
    vector: list[NDArray[np.float32]] = field(default_factory=list, compare=False, repr=False)


def deterministic(body: Mapping[str, Any], *, local_model: bool) -> bool:
    """The answer repeats: temperature 0 (OpenAI's default is 1), or a seed on a local model.

    An upstream is not trusted to honour ``seed`` (OpenAI documents it as best effort)."""
    temperature = body.get("temperature")
    if temperature is not None and temperature == 0:
        return True
    return local_model and body.get("seed") is not None


def build_key(
    model: str,
    model_version: str,
    scope: str,
    body: Mapping[str, Any],
    *,
    local_model: bool,
    policy: CachePolicy,
) -> CacheKey | None:
    """The key of an effective chat request body, or None when the model's policy skips it."""
    if policy.exact == "off":
        return None
    if policy.exact == "deterministic" and not deterministic(body, local_model=local_model):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    params = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and v is not None}
    for name in _FLOAT_FIELDS:
        if isinstance(params.get(name), int):
            params[name] = float(params[name])
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    for name, neutral in _NEUTRAL.items():
        if name in params and params[name] == neutral:
            del params[name]
    *history, last = [_clean(m) for m in messages]
    if not isinstance(last, dict):
        return None
    question = last.pop("content", None) if last.get("role") == "user" else None
    partition = _digest(
        orjson.dumps([scope, model, model_version]),
        orjson.dumps(params, option=orjson.OPT_SORT_KEYS),
        orjson.dumps([*history, last], option=orjson.OPT_SORT_KEYS),
    )
    exact = _digest(partition.encode(), orjson.dumps(question, option=orjson.OPT_SORT_KEYS))
    text = _question_text(question) if policy.semantic else None
    return CacheKey(model, scope, exact, partition, text, policy)


def client_bypass(headers: Mapping[str, str]) -> bool:
    """The client asked to skip the cache: ``x-shipway-cache: bypass`` or ``Cache-Control:
    no-cache`` (or ``no-store``). ``headers`` must look names up case-insensitively or hold
    them lower-cased (Starlette's ``Headers`` does)."""
    if headers.get("x-shipway-cache", "").strip().lower() == "bypass":
        return True
    directives = headers.get("cache-control", "")
    for directive in directives.split(","):
        name = directive.split("=", 1)[0].strip().lower()
        if name in ("no-cache", "no-store"):
            return True
    return False


def _clean(message: Any) -> Any:
    # A null field reads as an absent one, as the API treats it.
    if isinstance(message, dict):
        return {k: v for k, v in message.items() if v is not None}
    return message


def _question_text(content: Any) -> str | None:
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        text = "\n".join(p["text"] for p in content)
    else:
        return None  # images, audio, files: no text to compare
    text = text.strip()
    return text if text and len(text) <= SEMANTIC_MAX_CHARS else None


def _digest(*parts: bytes) -> str:
    # Each part is JSON (no raw newline inside) or a fixed-length digest: joined by "\n",
    # no two different inputs give the same bytes.
    return hashlib.blake2b(b"\n".join(parts), digest_size=16).hexdigest()
