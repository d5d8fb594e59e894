"""Spend budgets per key, team and tag over calendar windows: reserve, refuse, settle, alert.

Before dispatch a request reserves its maximum cost (prompt tokens + ``max_tokens`` at the
model's price) on every hard-limited budget it counts against, in one atomic ledger step
(``store/budget_ledger.py``): so parallel requests, on any number of replicas, cannot
overspend a budget at all unless a call costs more than its reservation, and then by no more
than that one call. After the call ``BudgetReservation.settle`` corrects every reservation to
the real cost (``settle(0)`` releases them); a budget with only a soft limit is counted then.

At a hard limit a rule either rejects (429 ``budget_exceeded``, ``Retry-After`` = the window's
end) or names a cheaper ``fallback_model``: the reservation comes back unfilled with
``fallback_model`` set and the caller reserves again for that model. A fallback rule should
list its ``models`` without the fallback one, so the fallback's calls are not capped by it;
a rule that would catch its own fallback rejects it instead of looping.

When a budget's spend, after a settle, reaches its soft limit, ``notify`` gets one event per
(rule, scope, window) in this process, beside a warning in the log.

Restarts forget nothing: the first time this process uses a budget in a window, ``seed_spend``
(when given) is asked what the database recorded for it, and the ledger takes that only if no
counter exists (one kept in Redis by other replicas is already right). With no rules
``reserve`` returns a shared no-op reservation without touching the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from shipway.config import ShipwaySettings
from shipway.costs.budget_notices import Notify, SoftLimitNotices
from shipway.costs.budget_rules import (
    Budget,
    BudgetScopeKey,
    CompiledRule,
    applicable_budgets,
    refusal_message,
)
from shipway.costs.budget_seeding import BudgetSeeder, SeedSpend
from shipway.costs.windows import CalendarWindows
from shipway.errors import BudgetExceeded
from shipway.store.budget_ledger import (
    BudgetLedger,
    ReserveItem,
    ReserveResult,
    from_nano,
    to_nano,
)

__all__ = [
    "NO_BUDGET",
    "BudgetReservation",
    "BudgetScopeKey",
    "BudgetService",
    "BudgetStatus",
    "Notify",
    "SeedSpend",
]


class BudgetReservation:
    """What one request holds on its budgets; ``settle`` it exactly once when the call ends."""

    __slots__ = ("_budgets", "_reserved", "_service", "_settled", "fallback_model", "rule")

    def __init__(
        self,
        service: BudgetService | None,
        budgets: tuple[Budget, ...] = (),
        reserved: tuple[int, ...] = (),
        *,
        fallback_model: str | None = None,
        rule: str | None = None,
    ) -> None:
        self._service = service
        self._budgets = budgets
        self._reserved = reserved
        self._settled = False
        self.fallback_model = fallback_model
        """Set when a fallback budget is at its hard limit: serve this model instead
        (nothing was reserved; reserve again for it)."""
        self.rule = rule
        """The rule that asked for the fallback."""

    @property
    def budgets(self) -> list[str]:
        """The budgets counted (``rule:scope:value``), for logs."""
        return [budget.scope.counter for budget in self._budgets]

    async def settle(self, actual_cost: float) -> None:
        """Replace the reservations by the call's real cost; 0 releases them. Later calls
        do nothing."""
        if self._service is None or self._settled:
            return
        self._settled = True
        await self._service._settle(self._budgets, self._reserved, to_nano(actual_cost))


NO_BUDGET = BudgetReservation(None)
"""The reservation of a request no budget applies to (stateless: settling does nothing)."""


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    rule: str
    scope: Literal["key", "team", "tag"]
    value: str
    window: str
    spent: float
    soft_limit: float | None
    hard_limit: float | None
    resets_at: float
    """Epoch seconds of the window's end."""
    currency: str


class BudgetService:
    def __init__(
        self,
        settings: ShipwaySettings,
        ledger: BudgetLedger,
        *,
        clock: Callable[[], float],
        notify: Notify | None = None,
        seed_spend: SeedSpend | None = None,
    ) -> None:
        self._rules = tuple(CompiledRule.of(rule) for rule in settings.budgets.rules)
        self._ledger = ledger
        self._windows = CalendarWindows(settings.budgets.timezone, clock)
        self._currency = settings.telemetry.currency
        self._notices = SoftLimitNotices(notify, self._currency, self._windows)
        self._seeder = (
            None if seed_spend is None else BudgetSeeder(seed_spend, ledger, self._windows)
        )

    @property
    def active(self) -> bool:
        """Whether any rule is configured (without one, ``reserve`` does no work)."""
        return bool(self._rules)

    async def reserve(
        self,
        *,
        key_name: str | None,
        key_id: int | None,
        team: str | None,
        tags: Sequence[str],
        model: str,
        max_cost: float,
    ) -> BudgetReservation:
        """Reserve ``max_cost`` on every hard-limited budget that applies, or refuse.

        Raises ``BudgetExceeded`` at a rejecting rule's hard limit; at a fallback rule's,
        returns a reservation with ``fallback_model`` set and nothing held.
        """
        if not self._rules:
            return NO_BUDGET
        budgets = applicable_budgets(
            self._rules,
            self._windows,
            key_name=key_name,
            key_id=key_id,
            team=team,
            tags=tags,
            model=model,
        )
        if not budgets:
            return NO_BUDGET
        amount = to_nano(max_cost)
        if self._seeder is not None:
            await self._seeder.ensure(budgets)
        hard = [budget for budget in budgets if budget.rule.hard is not None]
        if hard:
            items = [ReserveItem(budget.key, amount, budget.rule.hard) for budget in hard]
            result = await self._ledger.reserve(items)
            if not result.allowed:
                return self._refused(hard, result, amount, model)
        reserved = tuple(amount if budget.rule.hard is not None else 0 for budget in budgets)
        return BudgetReservation(self, tuple(budgets), reserved)

    async def status(
        self,
        *,
        key_name: str | None = None,
        key_id: int | None = None,
        team: str | None = None,
        tags: Sequence[str] = (),
    ) -> list[BudgetStatus]:
        """The current window's spend of every budget these apply to (whatever the model)."""
        budgets = applicable_budgets(
            self._rules,
            self._windows,
            key_name=key_name,
            key_id=key_id,
            team=team,
            tags=tags,
            model=None,
        )
        if self._seeder is not None:
            await self._seeder.ensure(budgets)
        totals = await self._ledger.read([budget.key for budget in budgets])
        return [
            BudgetStatus(
                budget.scope.rule,
                budget.scope.scope,
                budget.scope.value,
                budget.window.id,
                from_nano(total),
                budget.rule.rule.soft_limit,
                budget.rule.rule.hard_limit,
                budget.window.end,
                self._currency,
            )
            for budget, total in zip(budgets, totals, strict=True)
        ]

    def _refused(
        self, hard: list[Budget], result: ReserveResult, amount: int, model: str
    ) -> BudgetReservation:
        over = [
            (b, total)
            for b, total, fits in zip(hard, result.totals, result.fits, strict=True)
            if not fits
        ]
        for budget, spent in over:
            rule = budget.rule.rule
            if rule.on_exceeded == "fallback" and rule.fallback_model != model:
                continue
            # A rejecting rule wins over a fallback one: the request cannot be served as is.
            now = self._windows.clock()
            fallback = rule.on_exceeded == "fallback"
            message = refusal_message(budget, spent, amount, self._currency, now, fallback=fallback)
            can_wait = amount <= (budget.rule.hard or 0)
            raise BudgetExceeded(
                message, retry_after=budget.window.seconds_left(now) if can_wait else None
            )
        rule = over[0][0].rule.rule
        return BudgetReservation(None, fallback_model=rule.fallback_model, rule=rule.name)

    async def _settle(
        self, budgets: tuple[Budget, ...], reserved: tuple[int, ...], used: int
    ) -> None:
        items = []
        watched: list[Budget | None] = []
        for budget, held in zip(budgets, reserved, strict=True):
            # A budget whose soft limit is not yet reported is read back by the adjust.
            watch = self._notices.watching(budget)
            if used != held or watch:
                items.append((budget.key, used - held))
                watched.append(budget if watch else None)
        if not items:
            return
        totals = await self._ledger.adjust(items)
        for candidate, total in zip(watched, totals, strict=True):
            if candidate is not None:
                self._notices.check(candidate, total)
