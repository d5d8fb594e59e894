"""The counter interface: exact counts in fixed windows, shared by every replica.

Rate limits (requests and tokens per minute) and, next, budgets call ``hit`` before the work:
it adds ``amount`` to the key's count in the current window only if the total stays within
``limit``, and says how much is left and when the window ends. Tokens are reserved up front
(``max_tokens``) and corrected afterwards with ``settle`` (real usage) or ``release`` (the
request failed), against the window the reservation was made in.

Why fixed windows: a count per window is exact under concurrency with one atomic step and
O(1) memory per key, whether the amount is 1 request or 100,000 tokens; every replica agrees
on the window because windows are aligned to the epoch (Redis: the server's clock). A
sliding log is exact over every rolling window but stores one entry per hit, and a sliding
estimate (weighted previous window) is not exact. The cost is a burst at a window edge: up to
``limit`` just before and ``limit`` just after it, as with OpenAI's own per-minute limits.
Calendar budgets (per day, per month) are fixed windows too.

Why several keys per call: a request is checked against several limits (a key's and its
team's, requests and tokens). ``hit_many`` takes them all or none in one atomic step, so a
refusal leaves nothing to give back, and on Redis the whole check is one round trip;
``settle_many`` corrects all the reservations of one request in one more.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Counter", "CounterResult", "Hit", "window_ms"]


# A NamedTuple, not a dataclass: a limiter builds several per request, and a tuple is the
# cheapest immutable record to build and to unpack.
class Hit(NamedTuple):
    """One count asked of ``hit_many``: ``amount`` in ``key``'s current window of ``window_s``."""

    key: str
    amount: int
    limit: int
    window_s: float


@dataclass(frozen=True, slots=True)
class CounterResult:
    """The answer to one ``hit``, or to one of the hits of ``hit_many``."""

    allowed: bool
    """Whether ``amount`` fits (the window's total stays within the limit).

    ``hit`` counts it exactly when it fits; ``hit_many`` counts its hits only when every one
    fits, so a hit that fits beside a refused one is ``allowed`` but was not counted.
    """
    limit: int
    remaining: int
    """What is left in this window after this hit (nothing taken when refused)."""
    reset_after_s: float
    """Seconds until this window ends and the count starts from zero: ``Retry-After``."""
    window: int
    """The window's id (its start, ms since the epoch): pass it to ``release``/``settle``."""


def window_ms(window_s: float) -> int:
    """The window length in whole milliseconds, the unit both implementations count in."""
    return max(1, round(window_s * 1000))


def _check(amount: int, limit: int, window_s: float) -> None:
    if amount < 0 or limit < 0:
        raise ValueError(f"amount and limit must be >= 0, got {amount} and {limit}")
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")


class Counter(ABC):
    """Windowed counters by key; callers namespace their keys (``"rpm:key:12"``)."""

    # Not abstract: an in-process counter has nothing to open or close.
    async def start(self) -> None:  # noqa: B027
        """Connect and check the counter is reachable; raises ``StoreUnavailable``."""

    async def close(self) -> None:  # noqa: B027
        """Release connections; the counter is not used after this."""

    async def hit(self, key: str, amount: int, limit: int, window_s: float) -> CounterResult:
        """Count ``amount`` in the current window of ``window_s`` if the total stays <= limit.

        ``amount=0`` reads the window without counting (headers for a free request). An
        amount larger than ``limit`` is never allowed: the caller should say so, not retry.
        """
        _check(amount, limit, window_s)
        return (await self._hit_many((Hit(key, amount, limit, window_s),)))[0]

    async def hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        """Count every hit, each in its key's current window, only if every one fits.

        One result per hit, in order. When any hit is refused, nothing is counted on any key
        and the refused ones say so (``allowed`` False, with their ``reset_after_s``); the
        others are ``allowed`` but were not counted either. Keys must be distinct.
        """
        for _, amount, limit, window_s in hits:
            if amount < 0 or limit < 0 or not window_s > 0:
                _check(amount, limit, window_s)
        if len(hits) > 1 and len({hit.key for hit in hits}) < len(hits):
            # Each key is read once and written once per call: a repeated key would count
            # against a stale read of itself.
            raise ValueError(f"hit_many needs distinct keys, got {[hit.key for hit in hits]}")
        if not hits:
            return []
        return await self._hit_many(hits)

    async def release(self, key: str, amount: int, window: int) -> None:
        """Give back ``amount`` reserved in ``window`` (the request did not run)."""
        if amount:
            await self._adjust_many(((key, window),), -amount)

    async def settle(self, key: str, reserved: int, used: int, window: int) -> None:
        """Replace a reservation by what was really used; may take the count over the limit.

        A window that has ended is left alone: the count it would correct has expired.
        """
        if used != reserved:
            await self._adjust_many(((key, window),), used - reserved)

    async def settle_many(self, held: Sequence[tuple[str, int]], reserved: int, used: int) -> None:
        """``settle`` on every ``(key, window)`` of ``held`` at once: ``reserved`` -> ``used``.

        For one request's reservations, which were the same amount on each key; ``used=0``
        releases them. Costs nothing when there is nothing to correct.
        """
        if used != reserved and held:
            await self._adjust_many(held, used - reserved)

    @abstractmethod
    async def _hit_many(self, hits: Sequence[Hit]) -> list[CounterResult]:
        """The atomic check-all-then-add-all; hits are validated, non-empty, keys distinct."""

    @abstractmethod
    async def _adjust_many(self, held: Sequence[tuple[str, int]], delta: int) -> None:
        """Add ``delta`` (never below zero) to each key whose current window is still its own."""
