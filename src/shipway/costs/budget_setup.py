"""Building the budget service from the settings: its ledger, its seeding, its alerts.

The ledger is Redis when ``redis_url`` is set (every replica counts against the same
budgets), else this process's memory. Seeding reads the spend the attribution table holds
for the window, so a restart does not forget what was spent. A soft limit reached becomes
an alert event through the alert engine: logged, counted and sent to the webhooks like any
alert (one per budget and window in each process).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shipway.config import ShipwaySettings
from shipway.costs.budget_rules import BudgetScopeKey
from shipway.costs.budgets import BudgetService
from shipway.store.budget_ledger import BudgetLedger, MemoryBudgetLedger
from shipway.store.redis_budget_ledger import RedisBudgetLedger
from shipway.store.spend import SpendStore
from shipway.telemetry.webhooks import AlertEvent

__all__ = ["build_budgets"]


def build_budgets(
    settings: ShipwaySettings,
    spend: SpendStore,
    announce: Callable[[AlertEvent], None],
    clock: Callable[[], float] = time.time,
) -> tuple[BudgetService, BudgetLedger]:
    """The service, and its ledger for the lifespan to start and close."""
    ledger: BudgetLedger = (
        RedisBudgetLedger.from_url(settings.redis_url)
        if settings.redis_url
        else MemoryBudgetLedger(clock=clock)
    )

    async def seed(budget: BudgetScopeKey, window_start: float) -> float:
        since = datetime.fromtimestamp(window_start, UTC)
        return await spend.spent(budget.scope, budget.value, since, budget.models)

    def notify(event: dict[str, Any]) -> None:
        now = clock()
        announce(
            AlertEvent(
                status="firing",
                rule=str(event["rule"]),
                kind="budget_soft_limit",
                severity="warning",
                model=None,
                summary=str(event["message"]),
                value=float(event["spent"]),
                threshold=float(event["soft_limit"]),
                since=now,
                at=now,
                team=str(event["value"]) if event["scope"] == "team" else None,
            )
        )

    service = BudgetService(settings, ledger, clock=clock, notify=notify, seed_spend=seed)
    return service, ledger
