"""The pipeline's cost stages: route choice, response cache, budgets, attribution.

    route (a named route → the cheapest model that fits) → … → guard →
    cache lookup (a hit answers here: no budget, no queue slot, no worker) →
    budget (reserve the request's maximum cost; at a hard limit reject or fall back) →
    … dispatch … → cache store → account (settle the budget, record the cost)

The logic of each lives in its package (``costs/``, ``cache/``); this module only decides
when each runs and what of the ``Call`` it reads and writes. Every service is optional: a
server without routes, budget rules or cache does no work for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from shipway.backends.base import ChatRequest
from shipway.backends.generation_defaults import apply_defaults
from shipway.cache import CacheHit, CacheKey, ResponseCache
from shipway.config import GenerationDefaults, LlamaCppModel, Price, ShipwaySettings
from shipway.costs.attribution import CallCost, CostLedger
from shipway.costs.budgets import BudgetReservation, BudgetService
from shipway.costs.request_caps import check_prompt_tokens
from shipway.costs.routing import CostRouter, RouteNeeds
from shipway.errors import BudgetExceeded
from shipway.security.input_limits import message_texts
from shipway.telemetry.metrics import Metrics
from shipway.telemetry.spend_history import SpendHistory

if TYPE_CHECKING:
    from shipway.pipeline import Call

__all__ = ["NO_BUDGET", "Budget", "CostServices", "CostStages", "model_version"]

_CHARS_PER_TOKEN = 4
# A budget is reserved at most twice: the model asked for, then its budget's fallback.
_MAX_FALLBACKS = 1


class Budget(Protocol):
    """A budget reservation: settled once with the call's real cost (0 releases it)."""

    async def settle(self, actual_cost: float) -> None: ...


class _NoBudget:
    async def settle(self, actual_cost: float) -> None:
        return None


NO_BUDGET: Budget = _NoBudget()


@dataclass(slots=True)
class CostServices:
    """What ``server.py`` builds for the cost stages; ``None`` where a feature is off."""

    cache: ResponseCache | None = None
    budgets: BudgetService | None = None
    router: CostRouter | None = None
    ledger: CostLedger | None = None
    spend_history: SpendHistory | None = None


def model_version(settings: ShipwaySettings, alias: str) -> str:
    """The model's settings, hashed: a changed model (file, upstream, defaults) is a new one,
    so cache entries of the old one are never served for it."""
    dump = settings.models[alias].model_dump_json(exclude={"price", "cache", "queue"})
    return hashlib.blake2b(dump.encode(), digest_size=8).hexdigest()


class CostStages:
    def __init__(
        self,
        settings: ShipwaySettings,
        services: CostServices,
        metrics: Metrics,
        defaults: Mapping[str, GenerationDefaults],
    ) -> None:
        self._cache = services.cache
        self._budgets = services.budgets
        self._router = services.router
        self._ledger = services.ledger
        self._spend = services.spend_history
        self._metrics = metrics
        self._defaults = defaults
        self._prices: dict[str, Price] = {a: m.price for a, m in settings.models.items()}
        self._local = frozenset(
            a for a, m in settings.models.items() if isinstance(m, LlamaCppModel)
        )
        self._versions = {alias: model_version(settings, alias) for alias in settings.models}
        self._prompt_caps = {a: m.max_prompt_tokens for a, m in settings.models.items()}
        self._routes = frozenset() if self._router is None else self._router.names

    # -- route ---------------------------------------------------------------------------------
    def is_route(self, name: str) -> bool:
        return name in self._routes

    def choose_route(
        self, call: Call, request: ChatRequest | None, capability: str
    ) -> ChatRequest | None:
        """A named route's choice onto the call (``model`` the served one); the request gets
        the chosen model's generation defaults, as if the client had named it."""
        assert self._router is not None
        prompt_chars = 0 if request is None else _chars(request.messages)
        max_tokens = 0
        structured = False
        if request is not None:
            max_tokens = request.max_tokens or 0
            fmt = request.body.get("response_format")
            structured = bool(request.body.get("tools")) or (
                isinstance(fmt, dict) and fmt.get("type") not in (None, "text")
            )
        needs = RouteNeeds(capability, -(-prompt_chars // _CHARS_PER_TOKEN), max_tokens, structured)
        chosen = self._router.choose(call.model, needs)
        call.requested_model, call.model = call.model, chosen
        call.log_fields["route"] = call.requested_model
        if request is None:
            return None
        defaults = self._defaults.get(chosen)
        return (
            request
            if defaults is None
            else apply_defaults(request, defaults, call.principal.max_tokens)
        )

    # -- per-request caps ------------------------------------------------------------------------
    def check_prompt(self, call: Call, prompt_chars: int) -> None:
        model_cap = self._prompt_caps.get(call.model)
        key_cap = call.principal.max_prompt_tokens
        if model_cap is None and key_cap is None:
            return
        check_prompt_tokens(
            -(-prompt_chars // _CHARS_PER_TOKEN),
            model_limit=model_cap,
            key_limit=key_cap,
            model=call.model,
        )

    # -- cache -----------------------------------------------------------------------------------
    def cache_key(self, call: Call, request: ChatRequest) -> CacheKey | None:
        """The request's cache key, or None (and the verdict on the call) when not cached."""
        if self._cache is None or call.endpoint != "chat.completions":
            call.cache = None  # only chat completions are cached (and say so)
            return None
        if call.cache == "bypass":  # the client asked
            call.response_headers["x-shipway-cache"] = "bypass"
            self._metrics.cache_requests.labels(call.model, "bypass").inc()
            return None
        key = self._cache.key(
            call.model,
            self._versions[call.model],
            _scope(call),
            {**request.body, "messages": request.messages},
            local_model=call.model in self._local,
        )
        if key is None:
            call.cache = "bypass"
            call.response_headers["x-shipway-cache"] = "bypass"
            self._metrics.cache_requests.labels(call.model, "bypass").inc()
        return key

    async def cache_lookup(self, call: Call, key: CacheKey) -> dict[str, Any] | None:
        assert self._cache is not None
        hit: CacheHit | None = await self._cache.get(key)
        if hit is None:
            call.cache = "miss"
            call.response_headers["x-shipway-cache"] = "miss"
            self._metrics.cache_requests.labels(call.model, "miss").inc()
            return None
        call.cache, call.saved = "hit", hit.cost
        call.response_headers["x-shipway-cache"] = "hit"
        call.log_fields["cache_kind"] = hit.kind
        if hit.similarity is not None:
            call.log_fields["cache_similarity"] = round(hit.similarity, 4)
        self._metrics.cache_requests.labels(call.model, "hit").inc()
        if hit.cost:
            self._metrics.cache_saved.labels(call.model).inc(hit.cost)
        return hit.completion  # decoded afresh from the stored bytes: the route may stamp it

    async def cache_stale(self, call: Call, key: CacheKey, model: str) -> dict[str, Any] | None:
        """When every model failed: the request's cached answer past its TTL, if kept."""
        if self._cache is None:
            return None
        hit = await self._cache.get_stale(key)
        if hit is None:
            return None
        call.model = model  # the asked model's answer, not the last fallback's
        call.cache, call.saved = "stale", hit.cost
        call.response_headers["x-shipway-cache"] = "stale"
        call.response_headers["x-shipway-served-by"] = model
        call.response_headers["x-shipway-degraded"] = "true"
        call.log_fields["degraded"] = True
        self._metrics.cache_requests.labels(model, "stale").inc()
        return hit.completion

    async def cache_store(self, call: Call, key: CacheKey, completion: dict[str, Any]) -> None:
        assert self._cache is not None
        await self._cache.put(key, completion, self.price(call))

    # -- budget ----------------------------------------------------------------------------------
    @property
    def budgets_on(self) -> bool:
        return self._budgets is not None

    async def reserve_budget(
        self, call: Call, max_tokens_total: int, *, fallback: bool = True
    ) -> BudgetReservation:
        """Reserve the call's maximum cost; on a fallback budget, ``call.model`` changes
        (``fallback=False``: a budget that would send the call elsewhere refuses it)."""
        assert self._budgets is not None
        for attempt in range(_MAX_FALLBACKS + 1):
            prompt = call.prompt_estimate
            answer = max(max_tokens_total - prompt, 0)
            price = self._prices.get(call.model)
            max_cost = 0.0 if price is None else price.cost(prompt, answer)
            reservation = await self._budgets.reserve(
                key_name=None if call.principal.key_id is None else call.principal.name,
                key_id=call.principal.key_id,
                team=call.principal.team,
                tags=call.tags,
                model=call.model,
                max_cost=max_cost,
            )
            other = reservation.fallback_model
            if other is not None and not fallback:
                await reservation.settle(0)
                raise BudgetExceeded(
                    f"budget {reservation.rule!r} is spent for model {call.model!r}",
                    retry_after=None,
                )
            if other is None or attempt == _MAX_FALLBACKS:
                return reservation
            self._metrics.budget_rejections.labels(reservation.rule or "", "fallback").inc()
            call.log_fields["budget_fallback"] = f"{call.model}->{other}"
            if call.requested_model is None:
                call.requested_model = call.model
            call.model = other
        raise AssertionError("unreachable")

    # -- account ---------------------------------------------------------------------------------
    def price(self, call: Call) -> float:
        """The call's cost at its model's price (0 for a cache hit: no tokens were made)."""
        if call.cache in ("hit", "stale"):
            return 0.0
        price = self._prices.get(call.model)
        if price is None or not (call.prompt_tokens or call.completion_tokens):
            return 0.0
        return price.cost(call.prompt_tokens, call.completion_tokens)

    def record(self, call: Call) -> None:
        """The call's cost into attribution and the spend history (the anomaly rule's)."""
        if call.cache is not None:
            call.log_fields["cache"] = call.cache
            if call.saved:
                call.log_fields["cache_saved"] = round(call.saved, 10)
        if self._spend is not None and call.cost:
            self._spend.record(call.principal.team, call.model, call.cost)
        if self._ledger is None or call.status >= 400:
            return
        self._ledger.record(
            CallCost(
                request_id=call.request_id,
                at=datetime.now(UTC),
                key_id=call.principal.key_id,
                key_name=None if call.principal.key_id is None else call.principal.name,
                team=call.principal.team,
                user=call.user,
                tags=list(call.tags) or None,
                model_requested=call.requested_model or call.model,
                model_served=call.model,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                cost=call.cost,
                saved=call.saved,
                cached=call.cache in ("hit", "stale"),
                batch_id=call.batch_id,
            )
        )


def _scope(call: Call) -> str:
    """One tenant never reads another's answers: a team shares, a key without one is alone."""
    principal = call.principal
    if principal.team_id is not None:
        return f"team:{principal.team_id}"
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return "anonymous"


def _chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(text) for _, text in message_texts(messages))
