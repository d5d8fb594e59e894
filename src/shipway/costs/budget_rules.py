"""Which budgets a request counts against, and how a refusal is worded.

A rule names a scope (each API key, each team, each request tag), optionally the names it
applies to (``match``; unset: every one, each with its own budget) and the models it counts
(``models``; unset: all). One rule may thus give a request several budgets (one per tag).
A key's budget is identified by the key's id, which a rename or a reused name cannot move;
``match`` lists key names, as an operator writes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shipway.config_costs import BudgetRule
from shipway.costs.windows import CalendarWindow, CalendarWindows
from shipway.store.budget_ledger import LedgerKey, from_nano, to_nano

__all__ = ["Budget", "BudgetScopeKey", "CompiledRule", "applicable_budgets", "refusal_message"]

# A counter is kept this long after its window ends, so a request that started before the
# boundary still settles into the window it reserved in.
_KEEP_AFTER_END_S = 3600.0


@dataclass(frozen=True, slots=True)
class BudgetScopeKey:
    """One budget: what the seeding hook is asked the recorded spend of."""

    rule: str
    scope: Literal["key", "team", "tag"]
    value: str
    """The key's id (as text) for scope ``key``, the team's name, or the tag."""
    models: tuple[str, ...] | None
    """Only calls served by these models count; None: all."""

    @property
    def counter(self) -> str:
        return f"{self.rule}:{self.scope}:{self.value}"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: BudgetRule
    match: frozenset[str] | None
    models: frozenset[str] | None
    soft: int | None
    """``soft_limit`` in nano-units."""
    hard: int | None
    """``hard_limit`` in nano-units."""

    @classmethod
    def of(cls, rule: BudgetRule) -> CompiledRule:
        return cls(
            rule,
            None if rule.match is None else frozenset(rule.match),
            None if rule.models is None else frozenset(rule.models),
            None if rule.soft_limit is None else to_nano(rule.soft_limit),
            None if rule.hard_limit is None else to_nano(rule.hard_limit),
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget a request counts against, in the window current when it arrived."""

    rule: CompiledRule
    scope: BudgetScopeKey
    label: str
    """How messages name the scope: ``team 'ml'``."""
    window: CalendarWindow
    key: LedgerKey


def applicable_budgets(
    rules: Sequence[CompiledRule],
    windows: CalendarWindows,
    *,
    key_name: str | None,
    key_id: int | None,
    team: str | None,
    tags: Sequence[str],
    model: str | None,
) -> list[Budget]:
    """The budgets of every rule that applies; ``model`` None ignores the rules' ``models``."""
    found: list[Budget] = []
    now = windows.clock()
    for compiled in rules:
        if model is not None and compiled.models is not None and model not in compiled.models:
            continue
        rule, match = compiled.rule, compiled.match
        scopes: list[tuple[str, str]] = []
        if rule.scope == "key":
            if key_id is not None and (match is None or key_name in match):
                scopes.append((str(key_id), f"key {key_name or key_id!r}"))
        elif rule.scope == "team":
            if team is not None and (match is None or team in match):
                scopes.append((team, f"team {team!r}"))
        else:
            scopes.extend(
                (tag, f"tag {tag!r}")
                for tag in dict.fromkeys(tags)
                if match is None or tag in match
            )
        if not scopes:
            continue
        window = windows.at(rule.window, now)
        models = None if rule.models is None else tuple(rule.models)
        expires = math.ceil(window.end + _KEEP_AFTER_END_S)
        for value, label in scopes:
            scope = BudgetScopeKey(rule.name, rule.scope, value, models)
            key = LedgerKey(scope.counter, window.id, expires)
            found.append(Budget(compiled, scope, label, window, key))
    return found


def money(nano: int) -> str:
    """Two decimals, more only when they matter (a tiny model's call costs 0.000042)."""
    whole, dot, fraction = f"{from_nano(nano):,.9f}".partition(".")
    return whole + dot + fraction.rstrip("0").ljust(2, "0")


def duration(seconds: float) -> str:
    whole = max(math.ceil(seconds), 1)
    hours, rest = divmod(whole, 3600)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{rest // 60:02d}m"
    return f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def refusal_message(
    budget: Budget, spent: int, amount: int, currency: str, now: float, *, fallback: bool
) -> str:
    """Names the rule, the scope, the window, the figures and when the window resets."""
    rule, window = budget.rule.rule, budget.window
    limit = budget.rule.hard or 0
    zone = window.zone.key
    head = f"Budget {rule.name!r} for {budget.label} ({rule.window} {window.id}, {zone})"
    if amount > limit:
        return (
            f"{head}: this request may cost up to {money(amount)} {currency}, more than the "
            f"budget's whole limit of {money(limit)} {currency}; ask for fewer tokens "
            "(`max_tokens`) or a cheaper model."
        )
    resets = window.local_end().strftime("%Y-%m-%d %H:%M")
    also = f" Its fallback model {rule.fallback_model!r} is over it too." if fallback else ""
    return (
        f"{head} is used up: {money(spent)} of {money(limit)} {currency} spent, and this "
        f"request may cost up to {money(amount)} {currency}.{also} It resets at {resets} "
        f"{zone} (in {duration(window.seconds_left(now))})."
    )
