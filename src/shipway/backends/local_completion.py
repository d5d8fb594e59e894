"""What an embedded model accepts in a text completion (``/v1/completions``).

The API layer has already refused what no model gets (``suffix``, ``best_of`` > 1,
token-array prompts). What is left here is what only an embedded model cannot do: a field it
does not know is a 400 naming it, as for chat (backends/local_chat.py, which calls this).
"""

from __future__ import annotations

from typing import Any

from shipway.errors import UnsupportedParameter

__all__ = ["COMPLETION_FIELDS", "check_local_completion"]

# Fields of a completion body the embedded models honour, or that are bookkeeping only.
# `suffix` and `best_of` pass here only as null / 1 (the API layer refused the rest).
COMPLETION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "ignore_eos",
        "logprobs",
        "echo",
        "stream",
        "stream_options",
        "n",
        "user",
        "frequency_penalty",
        "presence_penalty",
        "timeout",
        "suffix",
        "best_of",
    }
)


def check_local_completion(body: dict[str, Any]) -> None:
    """400 for a combination an embedded model cannot answer."""
    if body.get("echo") and body.get("logprobs") is not None:
        # The runner reads logprobs as it samples; the prompt's tokens are evaluated in
        # batches whose logits it never keeps (that would slow every prompt down).
        raise UnsupportedParameter(
            "`echo` with `logprobs` is not supported by this model: it gives no log "
            "probabilities for prompt tokens; drop one of the two, or route the request to an "
            "upstream model that supports both",
            param="echo",
        )
