"""Request bodies of the OpenAI-compatible endpoints, validated with pydantic.

Known fields are typed and range-checked as OpenAI documents them; unknown fields are kept
(``extra="allow"``) so an upstream server receives its own extensions, and a local model
rejects them by name (backends/local_chat.py). Validation errors become a 400 whose
``param`` is the dotted path of the bad field, e.g. ``messages[0].role``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shipway.errors import InvalidRequest

__all__ = ["ChatCompletionBody", "CompletionBody", "EmbeddingBody", "parse_body"]


_MAX_STOP = 4


class _Body(BaseModel):
    # Strict, as OpenAI is: "2" is not a number and 1 is not a boolean.
    model_config = ConfigDict(extra="allow", strict=True)


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_type(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                if "type" not in part:
                    raise ValueError("each content part needs a `type`")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError("a text content part needs `text` as a string")
        return value


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionBody(_Body):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    user: str | None = None
    ignore_eos: bool | None = None
    modalities: list[str] | None = None
    response_format: ResponseFormat | None = None
    # Shapes only: a local model checks the definitions (backends/tool_calls.py); an
    # upstream receives them as sent.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _at_most_four_stops(cls, value: Any) -> Any:
        # Checked before the union so the message names the limit, not a failed branch.
        if isinstance(value, list) and len(value) > _MAX_STOP:
            raise ValueError(f"at most {_MAX_STOP} stop sequences, got {len(value)}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: Any) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return value


class CompletionBody(_Body):
    """``/v1/completions`` (OpenAI's legacy text completions). Which values a model cannot
    honour (``suffix``, ``best_of`` > 1, token prompts) is the route's call, so it can say why."""

    model: Annotated[str, Field(min_length=1)]
    prompt: str | list[str] | list[int] | list[list[int]] | None
    suffix: str | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=0, le=20)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, int] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    user: str | None = None
    ignore_eos: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _at_most_four_stops(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > _MAX_STOP:
            raise ValueError(f"at most {_MAX_STOP} stop sequences, got {len(value)}")
        return value


class EmbeddingBody(_Body):
    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    user: str | None = None


_T = TypeVar("_T", bound=BaseModel)


def parse_body(model: type[_T], data: Any) -> _T:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first['msg']}."
            if exc.error_count() > 1:
                message += f" ({exc.error_count() - 1} more problem(s) in the body)"
        raise InvalidRequest(message, param=param, code="invalid_value") from None


# pydantic names the branch of a union it tried ("str", "list[int]", "constrained-int" …)
# inside the error location; those are not part of the path the client wrote.
_UNION_BRANCH = re.compile(
    r"^(str|int|float|bool|none|dict|list|constrained-\w+|function-\w+)(\[.*)?$|\["
)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_BRANCH.search(part):
            out += f".{part}" if out else part
    return out
