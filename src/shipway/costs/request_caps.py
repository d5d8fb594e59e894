"""Token budgets per request: a cap on the prompt's size, by model and by key.

``models.<alias>.max_prompt_tokens`` and a key's ``max_prompt_tokens`` bound what one request
may send, so one client cannot spend a budget (or a worker's time) on a single huge prompt;
the smaller of the two applies. The answer's length is capped beside it, by
``security/input_limits.py`` (``max_tokens``). The caller counts the prompt's tokens (an
estimate before dispatch is enough: the cap is a guard, not a bill).
"""

from __future__ import annotations

from shipway.errors import InvalidRequest

__all__ = ["check_prompt_tokens"]


def check_prompt_tokens(
    prompt_tokens: int,
    *,
    model_limit: int | None,
    key_limit: int | None,
    model: str,
    param: str = "messages",
) -> None:
    """400 ``prompt_too_long`` naming the limit, when the prompt is over the smaller cap."""
    limits = [limit for limit in (model_limit, key_limit) if limit is not None]
    if not limits or prompt_tokens <= (cap := min(limits)):
        return
    if key_limit == cap:
        who = "this API key may send"
    else:
        who = f"model {model!r} accepts (`models.{model}.max_prompt_tokens`)"
    raise InvalidRequest(
        f"The prompt is too long: {prompt_tokens:,} tokens. The most {who} is {cap:,} "
        "tokens per request; shorten the messages.",
        param=param,
        code="prompt_too_long",
    )
