"""The in-process counter against a clock the test moves: windows, reservations, sweeping."""

from __future__ import annotations

from shipway.store import MemoryCounter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_windows_are_aligned_to_the_epoch() -> None:
    clock = Clock(1_000_042.5)
    counter = MemoryCounter(clock)
    result = await counter.hit("k", 1, 10, 60)
    assert result.window == 1_000_020_000  # 1,000,020 s is the last multiple of 60
    assert result.reset_after_s == 37.5
    clock.now = 1_000_079.999
    assert (await counter.hit("k", 1, 10, 60)).remaining == 8
    clock.now = 1_000_080.0
    fresh = await counter.hit("k", 1, 10, 60)
    assert fresh.remaining == 9 and fresh.reset_after_s == 60.0


async def test_adjusting_an_ended_window_changes_nothing() -> None:
    clock = Clock(600.0)
    counter = MemoryCounter(clock)
    old = await counter.hit("tpm", 50, 100, 60)
    clock.now = 660.0
    await counter.hit("tpm", 100, 100, 60)
    await counter.release("tpm", 50, old.window)
    await counter.settle("tpm", reserved=50, used=0, window=old.window)
    assert not (await counter.hit("tpm", 1, 100, 60)).allowed


async def test_the_same_key_with_another_window_length_counts_afresh() -> None:
    counter = MemoryCounter(Clock(3600.0))
    await counter.hit("k", 5, 5, 60)
    assert (await counter.hit("k", 5, 5, 3600)).allowed


async def test_ended_windows_are_swept() -> None:
    clock = Clock(0.0)
    counter = MemoryCounter(clock)
    for i in range(1000):
        await counter.hit(f"key-{i}", 1, 1, 1)
    clock.now = 10.0
    for _ in range(5000):
        await counter.hit("live", 0, 1, 1)
    assert len(counter._windows) == 0
