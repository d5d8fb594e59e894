"""A circuit breaker per model: stop sending traffic to a backend that keeps failing.

closed ──(N failures in a row, or failure rate over the window)──▶ open
open ──(cooldown passed: the first caller becomes the probe)──▶ half_open
half_open ──(probe succeeds)──▶ closed   half_open ──(probe fails)──▶ open (a new cooldown)

While open, callers fail fast (``BreakerOpen`` with ``Retry-After``) or fall back, so a dead
upstream costs milliseconds instead of a timeout per request, and gets one probe per cooldown
rather than the full load the moment it comes back. A probe that never reports (its request
was cancelled) gives up its slot on ``release_probe()``, or after a cooldown at the latest, so
the breaker cannot wedge in half_open.

Results are not tied to the call that produced them: while half_open, the first result
decides, even from a call let through before the breaker opened. A success is evidence enough
that the backend answers; a stale failure costs one more cooldown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipway.config_resilience import BreakerSettings
from shipway.errors import BreakerOpen
from shipway.resilience.window import SlidingCounts

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        model: str,
        settings: BreakerSettings,
        clock: Callable[[], float],
        on_transition: Callable[[str, str, str], None] | None = None,
    ) -> None:
        """``on_transition(model, old_state, new_state)`` is called on every change of state
        (for logs and a metric); it must not raise."""
        self.model = model
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._enabled = settings.enabled
        self.state = CLOSED
        self._since = clock()
        self._consecutive = 0
        self._window = SlidingCounts(settings.window_s)  # a: calls, b: failures
        self._next_probe_at = 0.0  # open: when the next probe may go
        self._probe_until: float | None = None  # half_open: an outstanding probe's slot ends

    # -- the hot path ----------------------------------------------------------------------
    def allow(self) -> bool:
        """Whether a call may go to the backend now; in half_open, True only for the probe."""
        if self.state == CLOSED or not self._enabled:
            return True
        now = self._clock()
        if self.state == OPEN:
            if now < self._next_probe_at:
                return False
            self._transition(HALF_OPEN, now)
        elif self._probe_until is not None and now < self._probe_until:
            return False  # the probe is out and has not reported yet
        self._probe_until = now + self.settings.cooldown_s
        return True

    def record_success(self) -> None:
        if not self._enabled:
            return
        if self.state == CLOSED:
            self._consecutive = 0
            self._window.add(self._clock(), 1, 0)
        elif self.state == HALF_OPEN:
            self._close(self._clock())
        # open: a call let through before the breaker opened; the probe decides, not it

    def record_failure(self) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if self.state == CLOSED:
            self._consecutive += 1
            self._window.add(now, 1, 1)
            if self._consecutive >= self.settings.consecutive_failures or self._rate_tripped(now):
                self._open(now)
        elif self.state == HALF_OPEN:
            self._open(now)

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled, or failed for a reason that is not
        the backend's): the next caller may probe at once."""
        if self.state == HALF_OPEN:
            self._probe_until = None

    # -- reading ---------------------------------------------------------------------------
    @property
    def retry_after_s(self) -> float:
        """Seconds until a call could be let through again (0 when closed)."""
        if self.state == CLOSED or not self._enabled:
            return 0.0
        now = self._clock()
        if self.state == OPEN:
            return max(0.0, self._next_probe_at - now)
        return 0.0 if self._probe_until is None else max(0.0, self._probe_until - now)

    def open_error(self) -> BreakerOpen:
        """The error for a call the breaker refused."""
        wait = self.retry_after_s
        return BreakerOpen(
            f"model {self.model!r} is failing, so its circuit breaker is open and calls fail "
            f"fast; the next attempt to reach it is in {wait:.1f}s",
            retry_after=max(wait, 1.0),
        )

    def snapshot(self) -> dict[str, Any]:
        """For /readyz: the state, how long it has held, and what would change it."""
        now = self._clock()
        calls, failures = self._window.totals(now)
        return {
            "state": self.state if self._enabled else "disabled",
            "state_for_s": round(now - self._since, 3),
            "consecutive_failures": self._consecutive,
            "window_calls": calls,
            "failure_rate": round(failures / calls, 4) if calls else 0.0,
            "next_probe_in_s": None if self.state == CLOSED else round(self.retry_after_s, 3),
        }

    # -- transitions -----------------------------------------------------------------------
    def _rate_tripped(self, now: float) -> bool:
        calls, failures = self._window.totals(now)
        return calls >= self.settings.min_calls and failures >= self.settings.failure_rate * calls

    def _open(self, now: float) -> None:
        self._next_probe_at = now + self.settings.cooldown_s
        self._probe_until = None
        self._transition(OPEN, now)

    def _close(self, now: float) -> None:
        self._consecutive = 0
        self._window.clear()
        self._probe_until = None
        self._transition(CLOSED, now)

    def _transition(self, new: str, now: float) -> None:
        old, self.state, self._since = self.state, new, now
        if self._on_transition is not None:
            self._on_transition(self.model, old, new)
