import asyncio

import numpy as np
import pytest

from shipway.backends.base import EmbedRequest, EmbedResult
from shipway.engine.admission import AdmissionQueue, Priority
from shipway.engine.batcher import EmbeddingBatcher
from shipway.errors import ContextLengthExceeded, QueueFull
from shipway.telemetry.metrics import Metrics


class RecordingEmbedder:
    """A real slot + backend: embeds each text as [len(text), index], records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.ready = True

    @property
    def backend(self) -> "RecordingEmbedder":
        return self

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.calls.append(list(request.inputs))
        await self.gate.wait()
        if any(text == "too long" for text in request.inputs):
            raise ContextLengthExceeded("input too long", param="input")
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
    first = asyncio.create_task(batcher.embed(EmbedRequest(["a"]), Priority.NORMAL))
    await asyncio.sleep(0.01)  # the first batch is running and holds the worker
    rest = [
        asyncio.create_task(batcher.embed(EmbedRequest([t]), Priority.NORMAL))
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
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    low = asyncio.create_task(batcher.embed(EmbedRequest(["l1", "l2"]), Priority.LOW))
    high = asyncio.create_task(batcher.embed(EmbedRequest(["h1", "h2"]), Priority.HIGH))
    norm = asyncio.create_task(batcher.embed(EmbedRequest(["n1"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    worker.gate.set()
    await asyncio.gather(blocker, low, high, norm)
    assert worker.calls == [["x"], ["h1", "h2", "n1"], ["l1", "l2"]]
    assert list(low.result().vectors[:, 1]) == [0, 1]


async def test_full_batcher_refuses() -> None:
    batcher, worker = _setup(max_waiting=1)
    worker.gate.clear()
    running = asyncio.create_task(batcher.embed(EmbedRequest(["a"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(batcher.embed(EmbedRequest(["b"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await batcher.embed(EmbedRequest(["c"]), Priority.HIGH)
    worker.gate.set()
    await asyncio.gather(running, waiting)


async def test_a_bad_input_fails_only_its_own_request() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    good = asyncio.create_task(batcher.embed(EmbedRequest(["fine"]), Priority.NORMAL))
    bad = asyncio.create_task(batcher.embed(EmbedRequest(["too long"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    worker.gate.set()
    await blocker
    assert (await good).vectors[0][0] == 4
    with pytest.raises(ContextLengthExceeded):
        await bad


async def test_cancelled_waiter_is_skipped() -> None:
    batcher, worker = _setup()
    worker.gate.clear()
    blocker = asyncio.create_task(batcher.embed(EmbedRequest(["x"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(batcher.embed(EmbedRequest(["gone"]), Priority.NORMAL))
    kept = asyncio.create_task(batcher.embed(EmbedRequest(["kept"]), Priority.NORMAL))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.waiting == 1
    worker.gate.set()
    await asyncio.gather(blocker, kept)
    assert worker.calls == [["x"], ["kept"]]
    assert batcher.waiting == 0
