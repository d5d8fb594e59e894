"""Gateway overhead: Shipway vs a bare forwarder vs no gateway, in front of a fast fake upstream.

The fake upstream (model ``fixed``) answers a constant tiny chat completion. In one run we
measure requests/s and p50/p99 latency at several concurrencies for: the upstream called
directly; a bare Starlette+aiohttp forwarder (the floor for a Python gateway); and
``shipway serve``. The server under test is pinned to core 0; the load generator and the
fake upstream share core 1. Also: aiohttp vs httpx as the forwarder's client (at c=16), and
the load generator's own ceiling.

    python benchmarks/gateway_overhead.py [--quick] [--loadgen wrk|aiohttp]
"""

from __future__ import annotations

import json
from typing import Any

import loadgen
from _common import BENCH_DIR, PYTHON, Servers, free_port, log, parse_args, pinned, report, table

PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "fixed", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 8}
).encode()
SERVER_CPU, CLIENT_CPU = "0", "1"
TARGET_OVERHEAD_MS, TARGET_RATIO = 1.5, 0.70


def shipway_config(upstream: str, access_log: bool) -> dict[str, Any]:
    model = {"backend": "openai", "base_url": f"{upstream}/v1", "upstream_model": "fixed"}
    return {
        "server": {"access_log": access_log},
        "queue": {"max_waiting": 1024},
        "embedded_models": False,
        "models": {"fixed": {**model, "max_concurrency": 256}},
    }


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        [("--loadgen", {"choices": ["auto", "wrk", "aiohttp"], "default": "auto"})],
    )
    concurrencies = [1, 16] if args.quick else [1, 16, 64]
    seconds, warmup = (2, 1) if args.quick else (10, 5)
    tool = "aiohttp" if args.loadgen == "aiohttp" or not loadgen.have_wrk() else "wrk"
    results: dict[tuple[str, int], dict[str, Any]] = {}

    with Servers() as servers:
        load = {"seconds": seconds, "warmup_s": warmup, "cpus": CLIENT_CPU, "tmp": servers.tmp}

        def measure(target: str, url: str, levels: list[int], how: str = tool) -> None:
            for c in levels:
                log(f"{target}: concurrency {c} ({how}, {warmup}s warm-up + {seconds}s)")
                results[(target, c)] = loadgen.run(how, url, BODY, concurrency=c, **load)

        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        argv = [PYTHON, "-m", "shipway.ops.fake_upstream", "--port", str(port)]
        servers.start("fake-upstream", pinned(CLIENT_CPU, argv), port=port)
        measure("direct", upstream + PATH, concurrencies)

        for client in ("aiohttp", "httpx"):
            port = free_port()
            argv = [PYTHON, str(BENCH_DIR / "bare_forwarder.py"), "--port", str(port)]
            argv += ["--upstream", upstream, "--client", client]
            forwarder = servers.start(f"bare-{client}", pinned(SERVER_CPU, argv), port=port)
            levels = concurrencies if client == "aiohttp" else [16]
            measure(f"bare-{client}", f"http://127.0.0.1:{port}{PATH}", levels)
            servers.stop(forwarder)

        for access_log in (False,) if args.quick else (False, True):
            name = "shipway+access_log" if access_log else "shipway"
            config = shipway_config(upstream, access_log)
            gateway, base = servers.shipway(name, config, cpus=SERVER_CPU)
            measure(name, base + PATH, concurrencies)
            servers.stop(gateway)

        other = "aiohttp" if tool == "wrk" else "wrk"
        if not args.quick and loadgen.have_wrk():
            measure(f"direct ({other} loadgen)", upstream + PATH, [16], how=other)

    print_report(results, concurrencies, tool, seconds, warmup)


def print_report(
    results: dict[tuple[str, int], dict[str, Any]],
    concurrencies: list[int],
    tool: str,
    seconds: int,
    warmup: int,
) -> None:
    raw = table(
        ["target", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
        [
            [target, c, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]]
            for (target, c), r in results.items()
        ],
    )
    rows = []
    for c in concurrencies:
        direct, bare, ship = (results[(t, c)] for t in ("direct", "bare-aiohttp", "shipway"))
        rows.append(
            [
                c,
                direct["p50_ms"],
                bare["p50_ms"] - direct["p50_ms"],
                ship["p50_ms"] - direct["p50_ms"],
                bare["rps"],
                ship["rps"],
                f"{ship['rps'] / bare['rps']:.0%}",
            ]
        )
    summary = table(
        [
            "concurrency",
            "direct p50 ms",
            "bare overhead p50 ms",
            "shipway overhead p50 ms",
            "bare req/s",
            "shipway req/s",
            "shipway % of bare",
        ],
        rows,
    )
    sections = ["All measurements:", raw, "Overhead (p50 minus direct p50):", summary]
    sections.append("\n".join(verdicts(results, concurrencies)))
    if ("bare-httpx", 16) in results:
        a, h = results[("bare-aiohttp", 16)], results[("bare-httpx", 16)]
        sections += [
            "Forwarder HTTP client at concurrency 16:",
            table(
                ["client", "req/s", "p50 ms", "p99 ms"],
                [
                    ["aiohttp", a["rps"], a["p50_ms"], a["p99_ms"]],
                    ["httpx", h["rps"], h["p50_ms"], h["p99_ms"]],
                ],
            ),
        ]
    notes = [
        f"Load generator: {tool}; {warmup} s warm-up (discarded), then {seconds} s measured.",
        f"Server under test on core {SERVER_CPU}; load generator and fake upstream on core "
        f"{CLIENT_CPU} (`taskset`).",
    ]
    if tool == "wrk":
        notes.append(
            f"wrk command per row (C = concurrency): `taskset -c {CLIENT_CPU} wrk -t1 -cC "
            f"-d{seconds}s --timeout 10s -s post.lua URL`, after the same for {warmup} s."
        )
    report("Gateway overhead (fake upstream, model `fixed`)", sections, notes)


def verdicts(results: dict[tuple[str, int], dict[str, Any]], concurrencies: list[int]) -> list[str]:
    """The issue's targets: the latency one at c=1 (no queueing), the throughput one at c>1."""
    overhead = results[("shipway", 1)]["p50_ms"] - results[("direct", 1)]["p50_ms"]
    met = "met" if overhead <= TARGET_OVERHEAD_MS else "NOT met"
    out = [f"- p50 overhead at concurrency 1: {overhead:.2f} ms (target ≤ 1.5 ms): {met}"]
    for c in concurrencies[1:]:
        ratio = results[("shipway", c)]["rps"] / results[("bare-aiohttp", c)]["rps"]
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        out.append(f"- req/s vs bare forwarder at concurrency {c}: {ratio:.0%} (≥ 70%): {met}")
    return out


if __name__ == "__main__":
    main()
