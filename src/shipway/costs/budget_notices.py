"""Soft-limit notices: one per (rule, scope, window) in this process, to the log and ``notify``.

``notify`` is whatever ``server.py`` connects (the alert engine, webhooks); it gets a plain
dict so this package needs nothing of theirs. A sink that raises is logged, never passed on
to the request that happened to cross the threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from shipway.costs.budget_rules import Budget, money
from shipway.costs.budget_seeding import PerWindow
from shipway.costs.windows import CalendarWindows
from shipway.store.budget_ledger import from_nano

__all__ = ["Notify", "SoftLimitNotices"]

Notify = Callable[[dict[str, Any]], None]


class SoftLimitNotices:
    def __init__(self, notify: Notify | None, currency: str, windows: CalendarWindows) -> None:
        self._notify = notify
        self._currency = currency
        self._sent = PerWindow(windows)
        self._log = structlog.get_logger("shipway.budgets")

    def watching(self, budget: Budget) -> bool:
        """Whether the budget has a soft limit not yet reported in its window."""
        return budget.rule.soft is not None and budget.key.budget not in self._sent.of(
            budget.window.id
        )

    def check(self, budget: Budget, total: int) -> None:
        """Report the budget if ``total`` (nano-units) reached its soft limit (first time only)."""
        soft = budget.rule.soft
        if soft is None or total < soft:
            return
        sent = self._sent.of(budget.window.id)
        if budget.key.budget in sent:
            return
        sent[budget.key.budget] = True
        rule = budget.rule.rule
        event: dict[str, Any] = {
            "kind": "budget_soft_limit",
            "rule": rule.name,
            "scope": rule.scope,
            "value": budget.scope.value,
            "window": budget.window.id,
            "spent": from_nano(total),
            "soft_limit": rule.soft_limit,
            "hard_limit": rule.hard_limit,
            "currency": self._currency,
            "resets_at": budget.window.end,
            "message": (
                f"Budget {rule.name!r} for {budget.label} has spent {money(total)} "
                f"{self._currency}, reaching its soft limit of {money(soft)} "
                f"({rule.window} {budget.window.id})."
            ),
        }
        self._log.warning("budget_soft_limit", **{k: v for k, v in event.items() if k != "kind"})
        if self._notify is not None:
            try:
                self._notify(event)
            except Exception:  # noqa: BLE001 - an alert sink's fault must not fail the settle
                self._log.exception("budget_notify_failed", rule=rule.name)
