"""The one interface every model service sits behind.

A backend takes a validated, typed request and answers in OpenAI's wire shapes (plain dicts
ready for JSON): ``chat`` returns a ``chat.completion`` body, ``stream`` yields
``chat.completion.chunk`` bodies, ``embed`` returns an embeddings body whose vectors are
NumPy float32 rows. The API layer stamps ``id``, ``created`` and ``model`` on the way out, so
backends need not agree on those. Backends know nothing of keys, budgets, queues or routes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MEAN_LOGPROB",
    "Backend",
    "ChatRequest",
    "EmbedRequest",
    "EmbedResult",
]


# A key a backend may add to a chat answer (or a stream's usage chunk): the mean token
# log-probability of the answer. The pipeline takes it off before the client sees it.
MEAN_LOGPROB = "_shipway_mean_logprob"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request after validation.

    ``messages`` are the validated OpenAI message objects; ``body`` keeps the client's whole
    JSON body so an upstream receives every field it understands.
    """

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    body: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    """Set for a text completion (``/v1/completions``): the raw prompt, continued as text with
    no chat template; ``messages`` then holds it as one user message, so the guards and
    limits read it like any chat."""

    def to_wire(self) -> dict[str, Any]:
        """The fields a local worker needs (no ``body``: it is for upstreams)."""
        return {
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
            "prompt": self.prompt,
        }


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: list[str]
    dimensions: int | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Vectors as float32 rows (``numpy.ndarray`` of shape (n, dim)) and prompt token counts."""

    vectors: Any
    prompt_tokens: int
    token_counts: list[int] | None = None


@runtime_checkable
class Backend(Protocol):
    """What the engine calls. One call at a time per slot the engine hands out."""

    async def chat(self, request: ChatRequest) -> dict[str, Any]: ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]: ...

    async def embed(self, request: EmbedRequest) -> EmbedResult: ...
