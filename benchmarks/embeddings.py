"""Embeddings/s through Shipway vs sentence-transformers called directly.

Shipway serves ``all-minilm-l6-v2`` (one sentence per request, official ``openai`` client) at
concurrency 1 and 32, a fixed number of requests each. The baseline is
``SentenceTransformer`` in this process with the same torch thread count as the worker,
encoding one sentence per call, and 32 sentences per call (what batching could give).

    python benchmarks/embeddings.py [--quick]
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from _common import Servers, log, parse_args, report, table
from shipway.backends.model_files import embedded_embedding_model_path

MODEL = "all-minilm-l6-v2"


def sentence(i: int) -> str:
    return f"Sentence number {i}: the container ship left the harbour before dawn."


def direct(count: int, batch: int, threads: int) -> float:
    """Sentences per second, ``batch`` sentences per ``encode`` call."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(embedded_embedding_model_path()), device="cpu")
    model.encode([sentence(i) for i in range(batch)], batch_size=batch)  # warm-up
    started = time.perf_counter()
    for i in range(0, count, batch):
        texts = [sentence(j) for j in range(i, i + batch)]
        model.encode(texts, batch_size=batch, show_progress_bar=False)
    return count / (time.perf_counter() - started)


async def through_shipway(base: str, count: int, concurrency: int) -> float:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(
        base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        next_index = 0

        async def one_client() -> None:
            nonlocal next_index
            while next_index < count:
                next_index += 1
                out = await client.embeddings.create(model=MODEL, input=sentence(next_index))
                assert len(out.data) == 1

        await client.embeddings.create(model=MODEL, input=[sentence(0)] * 4)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    counts = {1: 30, 32: 64} if args.quick else {1: 300, 32: 960}
    layouts = [(1, 1)] if args.quick else [(1, 1), (2, 1)]
    rows: list[list[Any]] = []

    threads = 1  # as the worker's default `threads`
    for batch in (1, 32):
        log(f"direct sentence-transformers, {batch} per call")
        rate = direct(counts[32] if batch > 1 else counts[1], batch, threads)
        rows.append(["direct", f"torch threads={threads}", f"{batch} per call", "-", rate])

    with Servers() as servers:
        for workers, threads in layouts:
            layout = f"workers={workers} threads={threads}"
            model = {"backend": "sentence_transformers", "workers": workers, "threads": threads}
            config = {"embedded_models": False, "models": {MODEL: model}}
            log(f"shipway {layout}: starting")
            server, base = servers.shipway(f"shipway-w{workers}", config)
            for concurrency, count in counts.items():
                log(f"shipway {layout}: concurrency {concurrency}, {count} requests")
                rate = asyncio.run(through_shipway(base, count, concurrency))
                rows.append(["shipway", layout, "1 per request", concurrency, rate])
            servers.stop(server)

    headers = ["path", "layout", "sentences", "concurrency", "embeddings/s"]
    notes = [
        f"Model `{MODEL}`; one short sentence per request (or per `encode` call); "
        f"requests per concurrency: {counts}.",
        "Shipway driven by `openai.AsyncOpenAI`; direct = `SentenceTransformer.encode` in one "
        "process with `HF_HUB_OFFLINE=1`.",
    ]
    report("Embeddings throughput", [table(headers, rows)], notes)


if __name__ == "__main__":
    main()
