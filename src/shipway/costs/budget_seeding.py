"""Seeding budgets from the spend the database recorded, once per budget and window.

A process that starts mid-window (a restart, a new replica) must not forget what was spent:
the first time it uses a budget in a window it asks ``seed_spend`` for the recorded spend and
hands it to ``BudgetLedger.seed``, which takes it only if no counter exists (a counter the
other replicas keep in Redis is already right). Concurrent requests for the same budget wait
for the same seeding; a failed one is forgotten, so the next request tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from shipway.costs.budget_rules import Budget, BudgetScopeKey
from shipway.costs.windows import CalendarWindows
from shipway.store.budget_ledger import BudgetLedger, to_nano

__all__ = ["BudgetSeeder", "PerWindow", "SeedSpend"]

SeedSpend = Callable[[BudgetScopeKey, float], Awaitable[float]]
"""(budget, its window's start in epoch seconds) → the spend recorded for it so far."""


class PerWindow:
    """Marks per (window id, budget), forgetting windows that are no longer current."""

    def __init__(self, windows: CalendarWindows) -> None:
        self._windows = windows
        self._by_window: dict[str, dict[str, Any]] = {}

    def of(self, window_id: str) -> dict[str, Any]:
        marks = self._by_window.get(window_id)
        if marks is None:
            current = self._windows.current_ids()
            for old in [w for w in self._by_window if w not in current]:
                del self._by_window[old]
            marks = self._by_window[window_id] = {}
        return marks


class BudgetSeeder:
    def __init__(
        self, seed_spend: SeedSpend, ledger: BudgetLedger, windows: CalendarWindows
    ) -> None:
        self._seed_spend = seed_spend
        self._ledger = ledger
        self._seeded = PerWindow(windows)

    async def ensure(self, budgets: list[Budget]) -> None:
        """Return once every budget's counter in its window has been seeded by this process."""
        pending: list[asyncio.Future[None]] = []
        for budget in budgets:
            marks = self._seeded.of(budget.window.id)
            state = marks.get(budget.key.budget)
            if state is True:
                continue
            if state is None:
                state = asyncio.ensure_future(self._seed(budget))
                marks[budget.key.budget] = state
                state.add_done_callback(_SeedDone(marks, budget.key.budget))
            pending.append(state)
        if pending:
            # Shielded: a request that goes away does not cancel the others' seeding.
            await asyncio.gather(*(asyncio.shield(task) for task in pending))

    async def _seed(self, budget: Budget) -> None:
        recorded = await self._seed_spend(budget.scope, budget.window.start)
        await self._ledger.seed(budget.key, to_nano(recorded))


class _SeedDone:
    """Marks a seeding done, or forgets a failed one so the next request tries again."""

    __slots__ = ("_marks", "_name")

    def __init__(self, marks: dict[str, Any], name: str) -> None:
        self._marks, self._name = marks, name

    def __call__(self, task: asyncio.Future[None]) -> None:
        # Reading the exception also keeps asyncio from logging it as never retrieved.
        failed = task.cancelled() or task.exception() is not None
        if self._marks.get(self._name) is task:
            if failed:
                del self._marks[self._name]
            else:
                self._marks[self._name] = True
