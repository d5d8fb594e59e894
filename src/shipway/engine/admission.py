"""Admission to one model: a bounded priority queue in front of that model's slots.

A *slot* is one unit of capacity: a worker process (which serves one request at a time) or
one of an upstream's ``max_concurrency`` places. Idle slots wait in ``_idle``; requests wait
in a heap ordered by (priority, arrival). When a slot is offered back it goes straight to
the best waiting request. The queue never holds more than ``max_waiting`` requests: one more
is refused at once with ``QueueFull`` and a ``Retry-After`` estimated from recent service
times. A waiter that is cancelled (deadline, client gone) simply leaves the heap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

from shipway.backends.base import Backend
from shipway.errors import QueueFull
from shipway.telemetry.metrics import Metrics

__all__ = ["AdmissionQueue", "Priority", "Slot"]


class Priority(IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2
    # Batch job lines (shipway.batches): behind every interactive request.
    BATCH = 3


class Slot(Protocol):
    @property
    def backend(self) -> Backend: ...

    @property
    def ready(self) -> bool:
        """True when the slot can take a new request right now."""


class AdmissionQueue:
    def __init__(
        self,
        model: str,
        *,
        max_waiting: int,
        metrics: Metrics,
        measured: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``measured=False`` when a batcher in front reports depth and wait for the model."""
        self.model = model
        self._measured = measured
        self.max_waiting = max_waiting
        self._metrics = metrics
        self._clock = clock
        self._idle: deque[Slot] = deque()
        self._idle_ids: set[int] = set()
        self._leased: set[int] = set()
        self._heap: list[tuple[int, int, asyncio.Future[Slot]]] = []
        self._seq = itertools.count()
        self._waiting = 0
        self._capacity = 0
        self._service_ewma_s = 1.0
        self._depth_gauge = metrics.queue_depth.labels(model)
        self._wait_histogram = metrics.queue_wait.labels(model)
        if measured:
            self._depth_gauge.set(0)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def idle(self) -> int:
        return len(self._idle)

    def set_capacity(self, slots: int) -> None:
        self._capacity = slots

    def offer(self, slot: Slot) -> None:
        """A slot became free: hand it to the best waiting request, or keep it idle.

        A slot still under lease is not offered here; the lease offers it when it ends.
        """
        if id(slot) in self._leased or id(slot) in self._idle_ids:
            return
        while self._heap:
            _, _, future = heapq.heappop(self._heap)
            if not future.done():
                self._leased.add(id(slot))
                future.set_result(slot)
                return
        self._idle.append(slot)
        self._idle_ids.add(id(slot))

    def withdraw(self, slot: Slot) -> None:
        """Forget an idle slot that can no longer serve (its worker died)."""
        if id(slot) in self._idle_ids:
            self._idle_ids.discard(id(slot))
            self._idle.remove(slot)

    def refuse(self, max_waiting: int) -> QueueFull:
        """The 429 for a full queue (also used by a batcher in front of this queue)."""
        self._metrics.queue_rejected.labels(self.model).inc()
        return QueueFull(
            f"the queue for model {self.model!r} is full ({max_waiting} waiting); "
            "retry after the time in the Retry-After header",
            retry_after=self.retry_after_s(),
        )

    def retry_after_s(self) -> int:
        per_slot = (self._waiting + 1) * self._service_ewma_s / max(1, self._capacity)
        return max(1, min(60, math.ceil(per_slot)))

    async def acquire(self, priority: Priority) -> Slot:
        # `offer` never leaves a slot idle while a live waiter exists, so an idle slot is free
        # to take even if `_waiting` still counts waiters that were settled but not yet woken.
        if self._idle:
            self._observe_wait(0.0)
            slot = self._idle.popleft()
            self._idle_ids.discard(id(slot))
            self._leased.add(id(slot))
            return slot
        if self._waiting >= self.max_waiting:
            raise self.refuse(self.max_waiting)
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (int(priority), next(self._seq), future))
        self._set_waiting(+1)
        started = self._clock()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted a slot in the same instant we were cancelled: pass it on.
                slot = future.result()
                self._leased.discard(id(slot))
                self.offer(slot)
            raise
        finally:
            self._set_waiting(-1)
            self._observe_wait(self._clock() - started)
            if len(self._heap) > 2 * self._waiting + 16:
                self._heap = [entry for entry in self._heap if not entry[2].done()]
                heapq.heapify(self._heap)

    def lease(self, priority: Priority) -> _Lease:
        """``async with queue.lease(priority) as slot``: wait for a slot, give it back after."""
        return _Lease(self, priority)

    def _returned(self, slot: Slot, held_s: float) -> None:
        self._leased.discard(id(slot))
        if slot.ready:
            self.offer(slot)
        self._service_ewma_s = 0.8 * self._service_ewma_s + 0.2 * held_s

    def _set_waiting(self, delta: int) -> None:
        self._waiting += delta
        if self._measured:
            self._depth_gauge.set(self._waiting)

    def _observe_wait(self, seconds: float) -> None:
        if self._measured:
            self._wait_histogram.observe(seconds)


class _Lease:
    """A slot held for one request (a plain class: this is on every request's path)."""

    __slots__ = ("_priority", "_queue", "_slot", "_started")

    def __init__(self, queue: AdmissionQueue, priority: Priority) -> None:
        self._queue = queue
        self._priority = priority

    async def __aenter__(self) -> Slot:
        self._slot = await self._queue.acquire(self._priority)
        self._started = self._queue._clock()
        return self._slot

    async def __aexit__(self, *exc_info: object) -> None:
        self._queue._returned(self._slot, self._queue._clock() - self._started)
