"""Calendar windows (a day, a month) in the configured time zone, as budgets count them.

A budget's spend starts from zero when its window starts: midnight, or the first of the
month, on the wall clock of ``budgets.timezone``. A window's bounds are epoch seconds computed
through ``zoneinfo``, so a day is 23 or 25 hours long across a DST change, and a midnight the
change skips starts the day at the change itself (``fold=0`` maps a missing wall time with the
offset before the gap, which is the instant the gap begins).

``CalendarWindows`` keeps the current window of each kind until its end passes, so the
request path pays one comparison, not a time-zone conversion, per budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["CalendarWindow", "CalendarWindows", "WindowKind", "window_at"]

WindowKind = Literal["day", "month"]
_KINDS: tuple[WindowKind, ...] = ("day", "month")


@dataclass(frozen=True, slots=True)
class CalendarWindow:
    """One day or month: ``id`` is ``2026-11-30`` or ``2026-11``; ``start <= t < end``."""

    kind: WindowKind
    id: str
    start: float
    """Epoch seconds of its first instant."""
    end: float
    """Epoch seconds of the next window's first instant."""
    zone: ZoneInfo

    def seconds_left(self, now: float) -> float:
        """Seconds until the window ends: a refusal's ``Retry-After``."""
        return max(self.end - now, 0.0)

    def contains(self, now: float) -> bool:
        return self.start <= now < self.end

    def local_end(self) -> datetime:
        """The end as a wall-clock time in the window's zone, for messages."""
        return datetime.fromtimestamp(self.end, self.zone)


def _midnight(day: date, zone: ZoneInfo) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def window_at(kind: WindowKind, at: float, zone: ZoneInfo) -> CalendarWindow:
    """The window of ``kind`` holding the instant ``at`` (epoch seconds) in ``zone``."""
    local = datetime.fromtimestamp(at, zone).date()
    if kind == "day":
        first = local
        following = date.fromordinal(local.toordinal() + 1)
        ident = local.isoformat()
    else:
        first = local.replace(day=1)
        following = (
            date(local.year + 1, 1, 1)
            if local.month == 12
            else date(local.year, local.month + 1, 1)
        )
        ident = f"{local.year:04d}-{local.month:02d}"
    return CalendarWindow(kind, ident, _midnight(first, zone), _midnight(following, zone), zone)


class CalendarWindows:
    """The current day and month windows by an injectable clock (epoch seconds)."""

    def __init__(self, timezone: str, clock: Callable[[], float] = time.time) -> None:
        self.zone = ZoneInfo(timezone)
        self.clock = clock
        self._current: dict[str, CalendarWindow] = {}

    def current(self, kind: WindowKind) -> CalendarWindow:
        return self.at(kind, self.clock())

    def at(self, kind: WindowKind, now: float) -> CalendarWindow:
        window = self._current.get(kind)
        # A clock that moves back (a test, an NTP step) gets the right window too.
        if window is None or not window.start <= now < window.end:
            window = window_at(kind, now, self.zone)
            self._current[kind] = window
        return window

    def current_ids(self) -> frozenset[str]:
        """The ids of the windows that are current now (to forget state of ended ones)."""
        now = self.clock()
        return frozenset(self.at(kind, now).id for kind in _KINDS)
