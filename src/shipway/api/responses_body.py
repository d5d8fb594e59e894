"""The `POST /v1/responses` body, what it may not ask for yet, and what a Response repeats of it.

Known fields are typed and range-checked as OpenAI documents them (``max_output_tokens`` at
least 16); items, tools and formats are checked when translated, so that each error names
its exact path. What needs state this server does not keep yet (previous_response_id,
conversation, store: true, background) or runs on OpenAI's side (stored prompts) is a 400
naming the parameter, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shipway.backends.base import ChatRequest
from shipway.errors import UnsupportedParameter

__all__ = ["STATELESS", "ResponsesBody", "TextParam", "echo_fields", "refuse_stateful"]

STATELESS = (
    "responses are not stored here yet (every response is `store: false`): send the whole "
    "conversation in `input`, appending each response's `output` items to it"
)


class TextParam(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesBody(BaseModel):
    """The Responses request; items, tools and formats are checked by ``translate`` so that
    each error names the exact path (``input[2].content[0].type``)."""

    model_config = ConfigDict(extra="allow", strict=True)
    model: Annotated[str, Field(min_length=1)]
    input: str | list[Any]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=16)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    text: TextParam | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    # Need stored state or run server-side: a 400 when set (see _refuse_stateful).
    store: bool | None = None
    background: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_tool_calls: int | None = None
    context_management: list[Any] | None = None


def refuse_stateful(body: ResponsesBody) -> None:
    """400 for what needs state this server does not keep, or runs on OpenAI's side."""
    if body.previous_response_id is not None:
        raise UnsupportedParameter(
            f"previous_response_id is not supported: {STATELESS}", param="previous_response_id"
        )
    if body.conversation is not None:
        raise UnsupportedParameter(
            f"conversations are not supported: {STATELESS}", param="conversation"
        )
    if body.store:
        raise UnsupportedParameter(
            f"`store: true` is not supported: {STATELESS}; send `store: false` or leave it out",
            param="store",
        )
    if body.background:
        raise UnsupportedParameter(
            "`background: true` needs stored responses to poll; stream instead (`stream: true`)",
            param="background",
        )
    refused = {
        "prompt": "stored prompt templates are not available here; send the text itself",
        "max_tool_calls": "max_tool_calls is not supported for chat-served models",
        "context_management": "context_management is not supported here",
    }
    for name, why in refused.items():
        if getattr(body, name) is not None:
            raise UnsupportedParameter(why, param=name)


def echo_fields(body: ResponsesBody, chat: ChatRequest) -> dict[str, Any]:
    """The request fields every Response object repeats (sampling as applied, defaults too)."""
    text: dict[str, Any] = {"format": (body.text and body.text.format) or {"type": "text"}}
    if body.text is not None and body.text.verbosity is not None:
        text["verbosity"] = body.text.verbosity
    reasoning = body.reasoning or {}
    echo: dict[str, Any] = {
        "instructions": body.instructions,
        "max_output_tokens": chat.max_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "temperature": chat.temperature,
        "text": text,
        "tool_choice": "auto" if body.tool_choice is None else body.tool_choice,
        "tools": [_echo_tool(tool) for tool in body.tools or ()],
        "top_p": chat.top_p,
        "truncation": body.truncation or "disabled",
        "background": False,
    }
    for name in ("user", "safety_identifier", "prompt_cache_key", "top_logprobs"):
        if getattr(body, name) is not None:
            echo[name] = getattr(body, name)
    return echo


def _echo_tool(tool: Any) -> Any:
    if not isinstance(tool, dict):
        return tool
    # The schema requires both, nullable: a client that left them out gets nulls back.
    return {"parameters": None, "strict": None, **tool}
