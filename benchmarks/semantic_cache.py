"""Semantic-cache hits through the whole gateway, the embedding included, against a forward.

``shipway serve`` with the fake upstream (model ``fixed``) behind a model whose cache is
semantic, and the embedded MiniLM as the embedding model. One question is answered once;
then every request asks it again with different spacing ("Say   ok." …): a new exact key
each time (the exact lookup misses), the same meaning (the semantic lookup hits), so each
request pays the embedding, the vector search and the answer's fetch. For comparison, the
same requests with the cache bypassed (``x-shipway-cache: bypass``), which forward to the
upstream. Sequential (c=1) and at c=4, interleaved in rounds.

    python benchmarks/semantic_cache.py [--quick]
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from _common import PYTHON, Servers, free_port, log, parse_args, percentile, report, table

TARGET_P99_MS = 20.0


def config(upstream: str, data_dir: str) -> dict[str, Any]:
    return {
        "server": {"access_log": False},
        "audit": {"enabled": False},
        "embedded_models": False,
        "data_dir": data_dir,
        "models": {
            "fixed": {
                "backend": "openai",
                "base_url": f"{upstream}/v1",
                "upstream_model": "fixed",
                "cache": {"semantic": True},
            },
            "all-minilm-l6-v2": {"backend": "sentence_transformers"},
        },
    }


def question(i: int) -> str:
    """The same question with its spaces varied: distinct bytes, one meaning."""
    a, b = divmod(i, 40)
    return "Say" + " " * (1 + a) + "ok" + " " * (b % 3) + "." + " " * (b // 3)


async def measure(
    url: str, start: int, count: int, concurrency: int, bypass: bool
) -> tuple[list[float], int, dict[str, int]]:
    """Latencies (ms), errors and the x-shipway-cache verdicts of ``count`` requests."""
    headers = {"x-shipway-cache": "bypass"} if bypass else {}
    numbers = iter(range(start, start + count))
    latencies: list[float] = []
    verdicts: dict[str, int] = {}
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in numbers:
            body = {
                "model": "fixed",
                "messages": [{"role": "user", "content": question(i)}],
                "max_tokens": 8,
                "temperature": 0,
            }
            began = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
                verdict = response.headers.get("x-shipway-cache", "?")
            latencies.append((time.perf_counter() - began) * 1000)
            verdicts[verdict] = verdicts.get(verdict, 0) + 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies, errors, verdicts


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    count, rounds = (100, 1) if args.quick else (400, 3)
    samples: dict[tuple[str, int], list[float]] = {}
    verdicts: dict[tuple[str, int], dict[str, int]] = {}
    with Servers() as servers:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        argv = [PYTHON, "-m", "shipway.ops.fake_upstream", "--port", str(port)]
        servers.start("fake-upstream", argv, port=port)
        _, base = servers.shipway("shipway", config(upstream, str(servers.tmp / "data")))
        url = base + "/v1/chat/completions"
        asyncio.run(measure(url, 0, 1, 1, bypass=False))  # the answer the others hit
        counter = itertools.count(1, count)
        for _ in range(rounds):
            for c in (1, 4):
                for name, bypass in (("semantic hit", False), ("forward (bypass)", True)):
                    log(f"{name}: c={c}")
                    lat, errors, seen = asyncio.run(measure(url, next(counter), count, c, bypass))
                    assert not errors, f"{errors} errors"
                    samples.setdefault((name, c), []).extend(lat)
                    for verdict, n in seen.items():
                        verdicts.setdefault((name, c), {}).setdefault(verdict, 0)
                        verdicts[(name, c)][verdict] += n
    rows = [
        [
            name,
            c,
            len(lat),
            percentile(lat, 50),
            percentile(lat, 90),
            percentile(lat, 99),
            ", ".join(f"{k}: {v}" for k, v in sorted(verdicts.get((name, c), {}).items())),
        ]
        for (name, c), lat in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    hit_p99 = max(percentile(samples[("semantic hit", c)], 99) for c in (1, 4))
    report(
        "Semantic cache: a hit through the gateway, embedding included",
        [table(["path", "c", "requests", "p50 ms", "p90 ms", "p99 ms", "x-shipway-cache"], rows)],
        [
            f"Target: a semantic hit's p99 ≤ {TARGET_P99_MS:g} ms: "
            f"{'met' if hit_p99 <= TARGET_P99_MS else 'NOT met'} ({hit_p99:.1f} ms, worst c).",
            "Each hit embeds the question with the embedded MiniLM (one worker process, "
            "requests batched), searches the team's vectors and fetches the stored answer.",
        ],
    )


if __name__ == "__main__":
    main()
