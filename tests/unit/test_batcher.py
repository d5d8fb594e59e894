import asyncio

import numpy as np
import pytest

from shipway.backends.base import EmbedRequest, EmbedResult
from shipway.engine.admission import AdmissionQueue, Priority
from shipway.engine.batcher import EmbeddingBatcher
from shipway.errors import ContextLengthExceeded, DeadlineExceeded, QueueFull, ShipwayError
from shipway.telemetry.metrics import Metrics

FAR = float("inf")  # no deadline


class RecordingEmbedder:
    """A real slot + backend: embeds each text as [len(text), index], records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.ready = True
        self.cancelled = 0
        self.explode = False

    @property
    def backend(self) -> "RecordingEmbedder":
        return self

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.calls.append(list(request.inputs))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.explode:
            raise KeyError("malformed reply")
        if any(text == "too long" for text in request.inputs):
            raise ContextLengthExceeded("input too long", param="input")
        if request.inputs == ["stalls"]:
            self.ready = False  # as a worker still stopping a cancelled call
            raise DeadlineExceeded("stalled")
        vectors = np.array([[len(t), i] for i, t in enumerate(request.inputs)], dtype=np.float32)
        return EmbedResult(vectors, len(request.inputs), [1] * len(request.inputs))


def _setup(
    max_waiting: int = 10, max_batch_inputs: int = 100
) -> tuple[EmbeddingBatcher, RecordingEmbedder]:
    metrics = Metrics()
    queue = AdmissionQueue("e", max_waiting=1, metrics=metrics, measured=False)
    worker = RecordingEmbedder()
    queue.offer(worker)  # type: ignore[arg-type]
    batcher = EmbeddingBatcher(
        "e", queue, max_waiting=max_waiting, max_batch_inputs=max_batch_inputs, metrics=metrics
    )
    return batcher, worker


async def test_requests_waiting_for_a_busy_worker_share_one_call() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    first = asyncio.create_task(batcher.embed(EmbedRequest(["a"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)  # the first batch is running and holds the worker
    rest = [
        asyncio.create_task(batcher.embed(EmbedRequest([t]), Priority.NORMAL, FAR))
        for t in ("bb", "ccc", "dddd")
    ]
    await asyncio.sleep(0.01)
    assert batcher.waiting == 3
    worker.gate.set()
    results = await asyncio.gather(first, *rest)
    assert worker.calls == [["a"], ["bb", "ccc", "dddd"]]
    assert [r.vectors[0][0] for r in results] == [1, 2, 3, 4]
    assert all(r.prompt_tokens == 1 for r in results)
    assert batcher.waiting == 0


async def test_batches_take_high_priority_first_and_respect_the_input_cap() -> None:
    batcher, worker = _setup(max_batch_inputs=3)
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    low = asyncio.create_task(batcher.embed(EmbedRequest(["l1", "l2"]), Priority.LOW, FAR))
    high = asyncio.create_task(batcher.embed(EmbedRequest(["h1", "h2"]), Priority.HIGH, FAR))
    norm = asyncio.create_task(batcher.embed(EmbedRequest(["n1"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    worker.gate.set()
    await asyncio.gather(blocker, low, high, norm)
    assert worker.calls == [["x"], ["h1", "h2", "n1"], ["l1", "l2"]]
    assert list(low.result().vectors[:, 1]) == [0, 1]


async def test_full_batcher_refuses() -> None:
    batcher, worker = _setup(max_waiting=1)
    worker.gate.clear()
    running = asyncio.create_task(batcher.embed(EmbedRequest(["a"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(batcher.embed(EmbedRequest(["b"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await batcher.embed(EmbedRequest(["c"]), Priority.HIGH, FAR)
    worker.gate.set()
    await asyncio.gather(running, waiting)


async def test_a_bad_input_fails_only_its_own_request() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    good = asyncio.create_task(batcher.embed(EmbedRequest(["fine"]), Priority.NORMAL, FAR))
    bad = asyncio.create_task(batcher.embed(EmbedRequest(["too long"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    worker.gate.set()
    await blocker
    assert (await good).vectors[0][0] == 4
    with pytest.raises(ContextLengthExceeded):
        await bad


async def test_cancelled_waiter_is_skipped() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(batcher.embed(EmbedRequest(["gone"]), Priority.NORMAL, FAR))
    kept = asyncio.create_task(batcher.embed(EmbedRequest(["kept"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.waiting == 1
    worker.gate.set()
    await asyncio.gather(blocker, kept)
    assert worker.calls == [["x"], ["kept"]]
    assert batcher.waiting == 0


async def test_a_batch_past_every_deadline_is_cancelled_and_settled() -> None:
    batcher, worker = _setup()
    worker.gate.clear()  # a hung worker
    deadline = asyncio.get_running_loop().time() + 0.05
    with pytest.raises(DeadlineExceeded):
        await batcher.embed(EmbedRequest(["a"]), Priority.NORMAL, deadline)
    await asyncio.sleep(0.01)
    assert worker.cancelled == 1  # the worker call itself was cancelled, not just abandoned


async def test_an_unexpected_error_settles_every_client_in_the_batch() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    worker.explode = True
    riders = [
        asyncio.create_task(batcher.embed(EmbedRequest([t]), Priority.NORMAL, FAR))
        for t in ("a", "b")
    ]
    await asyncio.sleep(0.01)
    worker.gate.set()
    with pytest.raises(ShipwayError):
        await blocker
    for rider in riders:
        with pytest.raises(ShipwayError):
            await asyncio.wait_for(rider, 1)


async def test_clients_after_a_stalled_solo_retry_wait_for_the_worker() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL, FAR))
    await asyncio.sleep(0.01)
    riders = [
        asyncio.create_task(batcher.embed(EmbedRequest([t]), Priority.NORMAL, FAR))
        for t in ("too long", "stalls", "innocent")
    ]
    await asyncio.sleep(0.01)
    worker.gate.set()
    await blocker
    await asyncio.sleep(0.01)
    with pytest.raises(ContextLengthExceeded):
        await riders[0]
    with pytest.raises(DeadlineExceeded):
        await riders[1]
    assert not riders[2].done() and batcher.waiting == 1  # back in line, not failed
    worker.ready = True
    batcher._queue.offer(worker)  # type: ignore[arg-type]  # the worker is idle again
    assert (await asyncio.wait_for(riders[2], 1)).vectors[0][0] == len("innocent")
