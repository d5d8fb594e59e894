"""A 1,000-line batch against the same requests sent interactively, and what a running batch
does to interactive latency.

``shipway serve`` in front of the fake upstream's ``slow-0.02`` model (each answer takes
20 ms; 4 upstream places, so at most 200 answers/s). Measured in one run:

- the 1,000 requests sent interactively at concurrency 2 (the batch's default
  ``batches.concurrency``) and at 4 (every place busy): requests/s;
- the same 1,000 lines as one batch (`files.create` + `batches.create`, polled until
  `completed`): lines/s, from creation to completion;
- interactive p50/p99 of sequential requests alone, then while the batch runs.

    python benchmarks/batch_throughput.py [--quick]
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any

import aiohttp
import openai

from _common import PYTHON, Servers, free_port, log, parse_args, percentile, report, table

MODEL = "slow"


def config(upstream: str, data_dir: str) -> dict[str, Any]:
    return {
        "server": {"access_log": False},
        "audit": {"enabled": False},
        "embedded_models": False,
        "data_dir": data_dir,
        "queue": {"max_waiting": 1024},
        "models": {
            MODEL: {
                "backend": "openai",
                "base_url": f"{upstream}/v1",
                "upstream_model": "slow-0.02",
                "max_concurrency": 4,
            }
        },
    }


def body(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 8}


async def interactive(url: str, count: int, concurrency: int) -> list[float]:
    numbers = iter(range(count))
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            began = time.perf_counter()
            async with session.post(url, json=body(i)) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append((time.perf_counter() - began) * 1000)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies


def run_batch(client: openai.OpenAI, lines: int) -> tuple[float, dict[str, int]]:
    jsonl = "".join(
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}
        )
        + "\n"
        for i in range(lines)
    )
    upload = client.files.create(file=("in.jsonl", io.BytesIO(jsonl.encode())), purpose="batch")
    began = time.perf_counter()
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    elapsed = time.perf_counter() - began
    counts = batch.request_counts
    assert counts is not None
    return elapsed, {"completed": counts.completed, "failed": counts.failed}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    lines = 200 if args.quick else 1000
    probes = 50 if args.quick else 200
    with Servers() as servers:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        servers.start(
            "fake-upstream",
            [PYTHON, "-m", "shipway.ops.fake_upstream", "--port", str(port)],
            port=port,
        )
        _, base = servers.shipway("shipway", config(upstream, str(servers.tmp / "data")))
        url = base + "/v1/chat/completions"
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        rows = []
        for c in (2, 4):
            log(f"interactive: {lines} requests at c={c}")
            began = time.perf_counter()
            asyncio.run(interactive(url, lines, c))
            rows.append([f"interactive, c={c}", lines, lines / (time.perf_counter() - began)])
        log("interactive latency alone")
        alone = asyncio.run(interactive(url, probes, 1))
        log(f"batch of {lines} lines")
        elapsed, counts = run_batch(client, lines)
        rows.append([f"batch ({counts['completed']} completed)", lines, lines / elapsed])
        log("interactive latency while a batch runs")
        during: list[float] = []
        runner = threading.Thread(
            target=lambda: during.extend(asyncio.run(interactive(url, probes, 1)))
        )
        batch_result: dict[str, Any] = {}
        batch_thread = threading.Thread(
            target=lambda: batch_result.update(
                zip(("elapsed", "counts"), run_batch(client, lines), strict=True)
            )
        )
        batch_thread.start()
        time.sleep(0.5)  # the batch is running
        runner.start()
        runner.join()
        batch_thread.join()
    latency_rows = [
        ["alone", len(alone), percentile(alone, 50), percentile(alone, 99)],
        ["while a batch runs", len(during), percentile(during, 50), percentile(during, 99)],
    ]
    report(
        "Batch jobs: throughput against interactive requests, and interactive latency meanwhile",
        [
            table(["how", "requests", "requests/s"], rows),
            table(["interactive (c=1)", "requests", "p50 ms", "p99 ms"], latency_rows),
        ],
        [
            "The fake upstream takes 20 ms an answer with 4 places (200 answers/s at most).",
            "A batch runs `batches.concurrency` (2) lines at a time, each only when the model "
            "has an idle place and nobody waiting, so interactive requests never queue "
            "behind batch lines: at most they wait for a line already running (20 ms here).",
        ],
    )


if __name__ == "__main__":
    main()
