"""Calendar windows in a non-UTC zone: ids, bounds across DST changes, and the reset at the
boundary by an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shipway.costs.windows import CalendarWindows, window_at

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ids_follow_the_local_calendar_not_utc() -> None:
    # 23:30 UTC on 30 November is 00:30 on 1 December in Paris (UTC+1 in winter).
    at = utc(2026, 11, 30, 23, 30)
    day, month = window_at("day", at, PARIS), window_at("month", at, PARIS)
    assert (day.id, month.id) == ("2026-12-01", "2026-12")
    assert day.start == utc(2026, 11, 30, 23, 0) and day.end == utc(2026, 12, 1, 23, 0)
    assert month.start == utc(2026, 11, 30, 23, 0) and month.end == utc(2026, 12, 31, 23, 0)
    before = window_at("day", utc(2026, 11, 30, 22, 59, 59), PARIS)
    assert before.id == "2026-11-30" and before.end == day.start


def test_a_day_is_23_hours_when_clocks_go_forward_and_25_when_back() -> None:
    spring = window_at("day", utc(2026, 3, 29, 12), PARIS)
    assert spring.id == "2026-03-29"
    assert spring.start == utc(2026, 3, 28, 23) and spring.end == utc(2026, 3, 29, 22)
    assert spring.end - spring.start == 23 * 3600
    autumn = window_at("day", utc(2026, 10, 25, 12), PARIS)
    assert autumn.start == utc(2026, 10, 24, 22) and autumn.end == utc(2026, 10, 25, 23)
    assert autumn.end - autumn.start == 25 * 3600
    # March starts in winter time and ends in summer time: 31 days less one hour.
    march = window_at("month", utc(2026, 3, 15), PARIS)
    assert march.id == "2026-03"
    assert march.start == utc(2026, 2, 28, 23) and march.end == utc(2026, 3, 31, 22)


def test_a_midnight_the_clocks_skip_starts_the_day_at_the_change() -> None:
    # Cuba moved its clocks from 00:00 to 01:00 on 8 March 2015: that day began at 05:00 UTC.
    havana = ZoneInfo("America/Havana")
    day = window_at("day", utc(2015, 3, 8, 12), havana)
    assert day.id == "2015-03-08"
    assert datetime.fromtimestamp(day.start, havana).hour == 1
    assert day.start == utc(2015, 3, 8, 5) and day.end - day.start == 23 * 3600


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/Havana", "Australia/Lord_Howe"])
@pytest.mark.parametrize("kind", ["day", "month"])
def test_windows_tile_time_without_gaps_or_overlaps(zone: str, kind: str) -> None:
    tz = ZoneInfo(zone)
    at = utc(2026, 1, 1)
    window = window_at(kind, at, tz)  # type: ignore[arg-type]
    while at < utc(2027, 1, 1):
        assert window.start <= at < window.end
        local = datetime.fromtimestamp(window.start, tz)
        assert window.id == (local.date().isoformat() if kind == "day" else f"{local:%Y-%m}")
        at += 5 * 3600
        if at >= window.end:
            following = window_at(kind, at, tz)  # type: ignore[arg-type]
            assert following.start == window.end
            window = following


def test_the_window_resets_at_the_calendar_boundary_by_the_injected_clock() -> None:
    clock = Clock(utc(2026, 11, 30, 22, 59, 30))  # 23:59:30 in Paris
    windows = CalendarWindows("Europe/Paris", clock)
    day = windows.current("day")
    assert day.id == "2026-11-30"
    assert day.seconds_left(clock()) == 30
    assert windows.current("month").id == "2026-11"
    clock.now = utc(2026, 11, 30, 23, 0)  # midnight: a new day and a new month
    assert windows.current("day").id == "2026-12-01"
    assert windows.current("month").id == "2026-12"
    assert windows.current("day").seconds_left(clock()) == 24 * 3600
    assert windows.current_ids() == {"2026-12-01", "2026-12"}
    clock.now -= 1  # a clock stepped back gets the earlier window again
    assert windows.current("day").id == "2026-11-30"
