"""Embedded chat throughput: generated tokens/s through Shipway vs llama-cpp-python directly.

Shipway serves ``smollm2-135m`` with two layouts (1 worker x 2 threads, 2 workers x 1 thread)
and is driven by the official ``openai`` client at several concurrencies, a fixed number of
rounds each (a round = ``concurrency`` requests at once). The baseline is ``llama_cpp.Llama``
in this process, same GGUF, same context and threads, one request at a time. Greedy decoding
(temperature 0), tokens counted from ``usage.completion_tokens``.

    python benchmarks/embedded_chat.py [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from _common import Servers, log, parse_args, report, table
from shipway.backends.model_files import embedded_chat_model_path

MODEL = "smollm2-135m"
MESSAGES = [
    {
        "role": "user",
        "content": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    }
]


def direct(threads: int, requests: int, max_tokens: int) -> dict[str, Any]:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(embedded_chat_model_path()),
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    llm.create_chat_completion(messages=MESSAGES, max_tokens=8, temperature=0)  # warm-up
    tokens = 0
    started = time.perf_counter()
    for _ in range(requests):
        out: Any = llm.create_chat_completion(
            messages=MESSAGES, max_tokens=max_tokens, temperature=0
        )
        tokens += out["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    del llm
    gc.collect()
    return {"requests": requests, "tokens": tokens, "seconds": elapsed}


def runner_in_process(threads: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """Shipway's own llama.cpp runner, called in this process: the worker minus IPC and HTTP."""
    from shipway.backends.llamacpp import LlamaCppRunner

    runner = LlamaCppRunner(embedded_chat_model_path(), n_ctx=2048, n_batch=512, threads=threads)
    request = {"messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0.0}
    runner.chat({**request, "max_tokens": 8}, lambda piece: None, lambda: False)  # warm-up
    tokens = 0
    started = time.perf_counter()
    for _ in range(requests):
        tokens += runner.chat(request, lambda piece: None, lambda: False)["completion_tokens"]
    elapsed = time.perf_counter() - started
    del runner
    gc.collect()
    return {"requests": requests, "tokens": tokens, "seconds": elapsed}


async def through_shipway(
    base: str, concurrency: int, rounds: int, max_tokens: int, workers: int
) -> dict[str, Any]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(
        base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600
    ) as client:

        async def one(tokens: int) -> int:
            out = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=tokens, temperature=0
            )
            assert out.usage is not None
            return out.usage.completion_tokens

        await asyncio.gather(*(one(8) for _ in range(workers)))  # warm every worker
        tokens = 0
        started = time.perf_counter()
        for _ in range(rounds):
            tokens += sum(await asyncio.gather(*(one(max_tokens) for _ in range(concurrency))))
        elapsed = time.perf_counter() - started
    return {"requests": rounds * concurrency, "tokens": tokens, "seconds": elapsed}


def _row(path: str, layout: str, c: int, r: dict[str, Any], vs_direct: str) -> list[Any]:
    rate = r["tokens"] / r["seconds"]
    return [path, layout, c, r["requests"], r["tokens"], r["seconds"], rate, vs_direct]


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if args.quick:
        layouts, levels, rounds, max_tokens = [(1, 2)], [1, 2], 1, 32
    else:
        layouts, levels, rounds, max_tokens = [(1, 2), (2, 1)], [1, 4, 8], 4, 128
    rows: list[list[Any]] = []
    baseline: dict[int, float] = {}

    for threads in sorted({t for _, t in layouts}, reverse=True):
        log(f"direct llama-cpp-python, n_threads={threads}")
        r = direct(threads, rounds, max_tokens)
        baseline[threads] = r["tokens"] / r["seconds"]
        rows.append(_row("direct", f"n_threads={threads}", 1, r, "100%"))
        log(f"shipway's runner in-process, threads={threads}")
        r = runner_in_process(threads, rounds, max_tokens)
        share = f"{r['tokens'] / r['seconds'] / baseline[threads]:.0%}"
        rows.append(_row("runner in-process", f"threads={threads}", 1, r, share))

    with Servers() as servers:
        for workers, threads in layouts:
            layout = f"workers={workers} threads={threads}"
            model = {"backend": "llamacpp", "workers": workers, "threads": threads}
            config = {"embedded_models": False, "models": {MODEL: model}}
            log(f"shipway {layout}: starting")
            server, base = servers.shipway(f"shipway-w{workers}t{threads}", config)
            for c in levels:
                log(f"shipway {layout}: concurrency {c}, {rounds} round(s)")
                r = asyncio.run(through_shipway(base, c, rounds, max_tokens, workers))
                rate = r["tokens"] / r["seconds"]
                vs_direct = f"{rate / baseline[threads]:.0%}" if c == 1 else "-"
                rows.append(_row("shipway", layout, c, r, vs_direct))
            servers.stop(server)

    headers = ["path", "layout", "concurrency", "requests", "completion tokens", "seconds"]
    headers += ["tokens/s", "% of direct (c=1, same threads)"]
    notes = [
        f"Model `{MODEL}` (SmolLM2-135M-Instruct GGUF), n_ctx 2048, temperature 0, "
        f"max_tokens {max_tokens}, one fixed prompt; {rounds} round(s) per concurrency.",
        "Shipway driven by `openai.AsyncOpenAI` (non-streaming); direct = `Llama."
        "create_chat_completion` in one process, one request at a time; runner in-process = "
        "Shipway's `LlamaCppRunner` (the code inside a worker) called in one process, so the "
        "gap between it and the Shipway rows is the cost of the worker pipe and HTTP.",
        "Target: Shipway at concurrency 1 ≥ 90% of direct tokens/s.",
    ]
    report("Embedded chat throughput", [table(headers, rows)], notes)


if __name__ == "__main__":
    main()
