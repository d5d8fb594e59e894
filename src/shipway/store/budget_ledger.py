"""The budget ledger: exact spend per (budget, calendar window), shared by every replica.

Spend is counted in integer nano-units of the currency (``to_nano``), so sums are exact
whatever the order of adds and corrections; a float sum would drift. (Redis' Lua compares in
doubles, exact up to 2**53 nano-units: nine million currency units per budget window.)

A request first ``reserve``s its maximum cost on every budget it counts against, in one atomic
check-all-then-add-all step: refused if any hard-limited budget would go over its limit, and
then nothing is counted anywhere, so a refusal leaves nothing to give back. When it ends,
``adjust`` corrects each reservation by (real cost - reserved): that may take a budget over
its limit (the real cost was above the estimate), never below zero. A budget's window is
part of its key (``LedgerKey.window``): a correction lands in the window the reservation was
made in even after the calendar moved on, until the key expires (``expires_at``, a little
after the window ends).

``seed`` sets a counter only if it does not exist yet: after a restart the process's first
use of a budget seeds it from the spend the database recorded, while a counter the other
replicas keep in Redis is left alone.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "BudgetLedger",
    "LedgerKey",
    "MemoryBudgetLedger",
    "ReserveItem",
    "ReserveResult",
    "to_nano",
]

_NANO = 1_000_000_000
# Expired counters are swept every this many calls: O(1) amortised.
_SWEEP_EVERY = 4096


def to_nano(amount: float) -> int:
    """An amount of currency in whole nano-units (the ledger's unit)."""
    if not amount >= 0:
        raise ValueError(f"amounts of money must be >= 0, got {amount}")
    return round(amount * _NANO)


def from_nano(amount: int) -> float:
    return amount / _NANO


class LedgerKey(NamedTuple):
    """One budget's counter in one window."""

    budget: str
    """The budget's identity, e.g. ``team-daily:team:ml``."""
    window: str
    """The calendar window's id, e.g. ``2026-11-30``."""
    expires_at: int
    """Epoch seconds after which the counter may be forgotten (its window is long over)."""


class ReserveItem(NamedTuple):
    key: LedgerKey
    amount: int
    limit: int | None
    """None: counted, never refused (a budget with only a soft limit)."""


@dataclass(frozen=True, slots=True)
class ReserveResult:
    allowed: bool
    """Every item fitted, and every one was counted; when False, none was."""
    totals: tuple[int, ...]
    """Each item's counter: after the add when allowed, as found when refused."""
    fits: tuple[bool, ...]
    """Which items fitted on their own (a refusal names the ones that did not)."""


def _check_keys(keys: Sequence[LedgerKey]) -> None:
    # Each counter is read once and written once per call: a repeated key would count against
    # a stale read of itself.
    if len(keys) > 1 and len(set(keys)) < len(keys):
        raise ValueError(f"ledger calls need distinct keys, got {list(keys)}")


class BudgetLedger(ABC):
    """Spend counters by (budget, window) in nano-units, one atomic step per call."""

    async def start(self) -> None:  # noqa: B027 - nothing to open in memory
        """Connect and check the ledger is reachable; raises ``StoreUnavailable``."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; the ledger is not used after this."""

    async def reserve(self, items: Sequence[ReserveItem]) -> ReserveResult:
        """Add every amount only if no limited counter goes over its limit (all or nothing)."""
        if not items:
            return ReserveResult(True, (), ())
        for item in items:
            if item.amount < 0 or (item.limit is not None and item.limit < 0):
                raise ValueError(f"amount and limit must be >= 0, got {item}")
        _check_keys([item.key for item in items])
        return await self._reserve(items)

    async def adjust(self, items: Sequence[tuple[LedgerKey, int]]) -> list[int]:
        """Add each delta (may be negative; a counter never goes below zero) → new totals."""
        if not items:
            return []
        _check_keys([key for key, _ in items])
        return await self._adjust(items)

    async def read(self, keys: Sequence[LedgerKey]) -> list[int]:
        """Each counter's total (0 for one that does not exist)."""
        return await self._read(keys) if keys else []

    async def seed(self, key: LedgerKey, amount: int) -> bool:
        """Set the counter to ``amount`` unless it exists; True if it was set."""
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        return await self._seed(key, amount)

    @abstractmethod
    async def _reserve(self, items: Sequence[ReserveItem]) -> ReserveResult: ...

    @abstractmethod
    async def _adjust(self, items: Sequence[tuple[LedgerKey, int]]) -> list[int]: ...

    @abstractmethod
    async def _read(self, keys: Sequence[LedgerKey]) -> list[int]: ...

    @abstractmethod
    async def _seed(self, key: LedgerKey, amount: int) -> bool: ...


class MemoryBudgetLedger(BudgetLedger):
    """This process's memory: exact for one replica (each call runs without an ``await``
    between its reads and writes, so on one event loop it is atomic without a lock)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._totals: dict[tuple[str, str], int] = {}
        self._expiry: dict[tuple[str, str], int] = {}
        self._calls = 0

    def _get(self, key: LedgerKey, now: float) -> int | None:
        slot = (key.budget, key.window)
        total = self._totals.get(slot)
        if total is not None and self._expiry[slot] <= now:
            del self._totals[slot], self._expiry[slot]
            return None
        return total

    def _set(self, key: LedgerKey, total: int, now: float) -> None:
        if key.expires_at > now:  # an expired key is as good as deleted (as in Redis)
            slot = (key.budget, key.window)
            self._totals[slot] = total
            self._expiry[slot] = key.expires_at

    async def _reserve(self, items: Sequence[ReserveItem]) -> ReserveResult:
        now = self._tick()
        totals = [self._get(item.key, now) or 0 for item in items]
        fits = tuple(
            limit is None or total + amount <= limit
            for (_, amount, limit), total in zip(items, totals, strict=True)
        )
        allowed = all(fits)
        if allowed:
            for i, item in enumerate(items):
                totals[i] += item.amount
                self._set(item.key, totals[i], now)
        return ReserveResult(allowed, tuple(totals), fits)

    async def _adjust(self, items: Sequence[tuple[LedgerKey, int]]) -> list[int]:
        now = self._tick()
        totals: list[int] = []
        for key, delta in items:
            held = self._get(key, now)
            total = max((held or 0) + delta, 0)
            if held is not None or total > 0:
                self._set(key, total, now)
            totals.append(total)
        return totals

    async def _read(self, keys: Sequence[LedgerKey]) -> list[int]:
        now = self._clock()
        return [self._get(key, now) or 0 for key in keys]

    async def _seed(self, key: LedgerKey, amount: int) -> bool:
        now = self._tick()
        if self._get(key, now) is not None:
            return False
        self._set(key, amount, now)
        return True

    def _tick(self) -> float:
        now = self._clock()
        self._calls += 1
        if not self._calls % _SWEEP_EVERY:
            for slot in [slot for slot, at in self._expiry.items() if at <= now]:
                del self._totals[slot], self._expiry[slot]
        return now
