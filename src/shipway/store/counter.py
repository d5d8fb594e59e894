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
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["Counter", "CounterResult", "window_ms"]


@dataclass(frozen=True, slots=True)
class CounterResult:
    """The answer to one ``hit``."""

    allowed: bool
    """Whether ``amount`` was counted (the window's total stays within the limit)."""
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
        return await self._hit(key, amount, limit, window_ms(window_s))

    async def release(self, key: str, amount: int, window: int) -> None:
        """Give back ``amount`` reserved in ``window`` (the request did not run)."""
        if amount:
            await self._adjust(key, -amount, window)

    async def settle(self, key: str, reserved: int, used: int, window: int) -> None:
        """Replace a reservation by what was really used; may take the count over the limit.

        A window that has ended is left alone: the count it would correct has expired.
        """
        if used != reserved:
            await self._adjust(key, used - reserved, window)

    @abstractmethod
    async def _hit(self, key: str, amount: int, limit: int, window_ms: int) -> CounterResult:
        """The atomic check-and-add; arguments are already validated."""

    @abstractmethod
    async def _adjust(self, key: str, delta: int, window: int) -> None:
        """Add ``delta`` (never below zero) if ``window`` is still the key's current one."""
