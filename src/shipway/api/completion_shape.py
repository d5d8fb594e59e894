"""Answers to one prompt of ``/v1/completions``, as OpenAI's legacy ``text_completion`` choices.

A local model answers a text completion the way it answers a chat (``message.content`` or
``delta.content``, chat logprobs): here that becomes ``text`` with the prompt in front when
the client asked for ``echo``, and the legacy logprobs shape::

    {"tokens": [" Paris"], "token_logprobs": [-0.26],
     "top_logprobs": [{" Paris": -0.26, " the": -2.8}], "text_offset": [24]}

``top_logprobs`` holds the ``logprobs`` most likely tokens and the sampled one (so up to
``logprobs`` + 1 entries, as OpenAI documents); ``text_offset`` counts characters from the
start of the prompt, echoed or not, as OpenAI's do. An upstream answers in the
``text_completion`` shape already: its choices pass as they are. Either way a choice is
renumbered to its place in the whole answer (prompt ``i`` of a list, choice ``j`` of ``n``:
index ``i * n + j``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PromptShaper", "legacy_logprobs"]


def legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat logprobs ``content`` entries in the legacy shape; ``offset`` is the first token's
    character offset from the start of the prompt."""
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []
    for entry in entries:
        token, logprob = entry["token"], entry["logprob"]
        top = {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or ()}
        top.setdefault(token, logprob)
        tokens.append(token)
        token_logprobs.append(logprob)
        top_logprobs.append(top)
        text_offset.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


class PromptShaper:
    """The choices answering one prompt, plain or streamed (one shaper per prompt and answer)."""

    def __init__(self, prompt: str, *, echo: bool, logprobs: bool, first_index: int) -> None:
        self._prompt = prompt
        self._echo = echo
        self._logprobs = logprobs
        self._first_index = first_index
        # Per choice of a stream: the next token's text offset (present once it has started).
        self._offsets: dict[int, int] = {}

    def choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        """A plain answer's choice (``chat.completion`` or ``text_completion``)."""
        index = self._first_index + int(choice.get("index") or 0)
        if "message" not in choice:  # already a text_completion choice (an upstream's)
            return {**choice, "index": index}
        text = (choice["message"] or {}).get("content") or ""
        logprobs = None
        if self._logprobs:
            entries = (choice.get("logprobs") or {}).get("content") or []
            logprobs = legacy_logprobs(entries, len(self._prompt))
        return {
            "text": self._prompt + text if self._echo else text,
            "index": index,
            "logprobs": logprobs,
            "finish_reason": choice.get("finish_reason"),
        }

    def streamed(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        """A stream chunk's choice, or None when it has nothing to say (a role-only delta)."""
        index = self._first_index + int(choice.get("index") or 0)
        if "delta" not in choice:  # already a text_completion choice (an upstream's)
            return {**choice, "index": index}
        text = (choice["delta"] or {}).get("content") or ""
        if index not in self._offsets:
            self._offsets[index] = len(self._prompt)
            if self._echo:
                text = self._prompt + text
        entries = (choice.get("logprobs") or {}).get("content") or []
        finish = choice.get("finish_reason")
        if not text and not entries and finish is None:
            return None
        logprobs = None
        if self._logprobs:
            logprobs = legacy_logprobs(entries, self._offsets[index])
            self._offsets[index] += sum(len(token) for token in logprobs["tokens"])
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
