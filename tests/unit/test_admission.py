import asyncio

import pytest

from shipway.engine.admission import AdmissionQueue, Priority
from shipway.errors import QueueFull
from shipway.telemetry.metrics import Metrics


class FakeSlot:
    """A real implementation of the slot interface, whose readiness the test controls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True

    @property
    def backend(self):  # type: ignore[no-untyped-def]
        return None


def _queue(max_waiting: int = 10) -> AdmissionQueue:
    return AdmissionQueue("m", max_waiting=max_waiting, metrics=Metrics())


async def test_idle_slot_is_leased_at_once_and_returned() -> None:
    queue = _queue()
    slot = FakeSlot("a")
    queue.offer(slot)
    async with queue.lease(Priority.NORMAL) as leased:
        assert leased is slot
        assert queue.idle == 0
    assert queue.idle == 1


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    queue = _queue()
    slot = FakeSlot("only")
    order: list[str] = []

    async def want(name: str, priority: Priority) -> None:
        async with queue.lease(priority):
            order.append(name)
            await asyncio.sleep(0)

    tasks = [
        asyncio.create_task(want(n, p))
        for n, p in [
            ("low1", Priority.LOW),
            ("norm1", Priority.NORMAL),
            ("high1", Priority.HIGH),
            ("norm2", Priority.NORMAL),
            ("high2", Priority.HIGH),
        ]
    ]
    await asyncio.sleep(0)
    assert queue.waiting == 5
    queue.offer(slot)
    await asyncio.gather(*tasks)
    assert order == ["high1", "high2", "norm1", "norm2", "low1"]


async def test_full_queue_refuses_with_retry_after() -> None:
    queue = _queue(max_waiting=2)
    queue.set_capacity(1)
    waiters = [asyncio.create_task(queue.acquire(Priority.NORMAL)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as info:
        await queue.acquire(Priority.HIGH)
    assert info.value.status == 429 and info.value.retry_after is not None
    assert info.value.retry_after >= 1
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert queue.waiting == 0


async def test_zero_waiting_allowed_means_busy_is_refused() -> None:
    queue = _queue(max_waiting=0)
    with pytest.raises(QueueFull):
        await queue.acquire(Priority.HIGH)


async def test_cancelled_waiter_leaves_and_slot_goes_to_next() -> None:
    queue = _queue()
    first = asyncio.create_task(queue.acquire(Priority.HIGH))
    second = asyncio.create_task(queue.acquire(Priority.NORMAL))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert queue.waiting == 1
    slot = FakeSlot("s")
    queue.offer(slot)
    assert await second is slot


async def test_timeout_while_waiting_leaves_the_queue() -> None:
    queue = _queue()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await queue.acquire(Priority.NORMAL)
    assert queue.waiting == 0


async def test_busy_slot_is_not_offered_twice() -> None:
    queue = _queue()
    slot = FakeSlot("w")
    queue.offer(slot)
    async with queue.lease(Priority.NORMAL):
        slot.ready = False
        queue.offer(slot)  # the worker said "idle" while leased: ignored
    assert queue.idle == 0  # not ready at lease end: the slot offers itself later
    slot.ready = True
    queue.offer(slot)
    queue.offer(slot)
    assert queue.idle == 1


async def test_withdrawn_slot_is_not_handed_out() -> None:
    queue = _queue()
    slot = FakeSlot("dead")
    queue.offer(slot)
    queue.withdraw(slot)
    assert queue.idle == 0


async def test_a_returned_slot_is_not_stranded_by_a_cancelled_waiter() -> None:
    """A waiter cancelled in the same loop turn as a slot comes back must not strand the slot."""
    queue = _queue()
    slot = FakeSlot("only")
    queue.offer(slot)
    async with queue.lease(Priority.NORMAL):
        doomed = asyncio.create_task(queue.acquire(Priority.NORMAL))
        await asyncio.sleep(0)

        async def newcomer() -> object:
            async with asyncio.timeout(1.0):
                return await queue.acquire(Priority.NORMAL)

        late = asyncio.create_task(newcomer())
        doomed.cancel()
    assert await late is slot
