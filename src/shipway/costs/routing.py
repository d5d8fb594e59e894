"""Cost-aware routes: a name clients ask for (``auto``) served by the cheapest model that fits.

A candidate fits when it serves the endpoint, takes the request's features (tools or a
response format), holds the prompt and the answer in its context, is available (some worker
can load it) and, when the route sets a latency ceiling, its live p95 is under it. Among the
ones that fit, the lowest cost for this request's tokens wins (prompt + ``max_tokens`` at the
model's price); a tie keeps the route's order, so list the preferred model first.

Why live latency from the in-memory history and not from Prometheus: the gateway decides per
request, so the figure must be local and cheap; it is computed at most once a second per
model. A model with no recent traffic has no p95 and is not skipped for latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shipway.config import LlamaCppModel, OpenAIUpstreamModel, ShipwaySettings
from shipway.config_costs import RouteSettings
from shipway.errors import ModelUnavailable, ShipwayError

__all__ = ["CostRouter", "RouteNeeds", "RouteUnfit"]

# Seconds a model's live p95 is reused before it is read again from the history.
_LATENCY_TTL_S = 1.0


class RouteUnfit(ShipwayError):
    """No candidate of a route can serve this request (each one's reason is in the message)."""

    status = 400
    type = "invalid_request_error"
    code = "no_model_fits_route"


@dataclass(frozen=True, slots=True)
class RouteNeeds:
    """What a request asks of the model that will serve it."""

    capability: str
    """``chat`` or ``embeddings``."""
    prompt_tokens: int
    """An estimate (4 characters a token) unless the caller counted exactly."""
    max_tokens: int
    structured: bool = False
    """The request has ``tools`` or a ``response_format`` other than text."""


@dataclass(frozen=True, slots=True)
class _Candidate:
    alias: str
    capabilities: frozenset[str]
    context: int | None
    structured: bool
    input_price: float
    output_price: float


class CostRouter:
    """Chooses a route's model per request; ``choose`` is pure apart from the live latency."""

    def __init__(
        self,
        settings: ShipwaySettings,
        capabilities: Mapping[str, frozenset[str]],
        *,
        p95_latency: Callable[[str, float], float | None],
        available: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``p95_latency(alias, window_s)``: live p95 seconds or None; ``available(alias)``:
        whether the model can take a request now (not every worker failing to load)."""
        self._routes: dict[str, RouteSettings] = dict(settings.routes)
        self._candidates: dict[str, _Candidate] = {}
        for alias, model in settings.models.items():
            context: int | None = None
            structured = isinstance(model, LlamaCppModel)
            if isinstance(model, LlamaCppModel):
                context = model.n_ctx
            elif isinstance(model, OpenAIUpstreamModel):
                context, structured = model.context_length, model.supports_tools
            self._candidates[alias] = _Candidate(
                alias,
                capabilities.get(alias, frozenset()),
                context,
                structured,
                model.price.input,
                model.price.output,
            )
        self._p95 = p95_latency
        self._available = available
        self._clock = clock
        self._latency: dict[str, tuple[float, float | None]] = {}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._routes)

    def models_of(self, route: str) -> list[str]:
        return list(self._routes[route].models)

    def choose(self, route: str, needs: RouteNeeds) -> str:
        """The alias that serves; raises ``RouteUnfit`` (400) or ``ModelUnavailable`` (503)."""
        settings = self._routes[route]
        best: tuple[float, int, str] | None = None
        reasons: list[str] = []
        unavailable = 0
        for order, alias in enumerate(settings.models):
            reason = self._unfit(self._candidates[alias], needs, settings)
            if reason is None and not self._available(alias):
                reason, unavailable = "unavailable", unavailable + 1
            if reason is not None:
                reasons.append(f"{alias}: {reason}")
                continue
            candidate = self._candidates[alias]
            cost = (
                needs.prompt_tokens * candidate.input_price
                + needs.max_tokens * candidate.output_price
            )
            if best is None or (cost, order) < best[:2]:
                best = (cost, order, alias)
        if best is not None:
            return best[2]
        message = f"no model of route {route!r} can serve this request ({'; '.join(reasons)})"
        if unavailable:
            raise ModelUnavailable(message, retry_after=5.0)
        raise RouteUnfit(message, param="model")

    def _unfit(
        self, candidate: _Candidate, needs: RouteNeeds, settings: RouteSettings
    ) -> str | None:
        if needs.capability not in candidate.capabilities:
            return f"does not serve {needs.capability}"
        if needs.structured and not candidate.structured:
            return "does not take tools or response_format"
        wanted = needs.prompt_tokens + needs.max_tokens
        if (
            candidate.context is not None
            and needs.capability == "chat"
            and wanted > candidate.context
        ):
            return f"context {candidate.context} tokens < {wanted} needed"
        ceiling = settings.max_latency_p95_s
        if ceiling is not None:
            p95 = self._live_p95(candidate.alias, settings.latency_window_s)
            if p95 is not None and p95 > ceiling:
                return f"p95 latency {p95:.2f}s > {ceiling:g}s"
        return None

    def _live_p95(self, alias: str, window_s: float) -> float | None:
        now = self._clock()
        seen = self._latency.get(alias)
        if seen is not None and now - seen[0] < _LATENCY_TTL_S:
            return seen[1]
        value = self._p95(alias, window_s)
        self._latency[alias] = (now, value)
        return value
