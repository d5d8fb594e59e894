"""Gateway overhead: Shipway vs a bare forwarder vs no gateway, in front of a fast fake upstream.

The fake upstream (model ``fixed``) answers a constant tiny chat completion. In one run we
measure requests/s and p50/p99 latency at several concurrencies for: the upstream called
directly; a bare Starlette+aiohttp forwarder (the floor for a Python gateway); and
``shipway serve`` in several set-ups (SHIPWAY_TARGETS: nothing on; trace context only;
observability fully on; a key and rate limits on every request; the whole pipeline (keys,
limits, access and audit logs, exported traces); that plus the injection guard; the
resilience layer off (timeouts, retries, breaker, health probes: on everywhere else); a spend
budget on the key; and an exact response-cache hit on every request). The server under
test is pinned to core 0; the load generator and the fake upstream share core 1. Also:
aiohttp vs httpx as the forwarder's client (at c=16), the HTTP server under the same
forwarder (uvicorn httptools, uvicorn h11, uvicorn httptools with Shipway's limits and
timeouts, granian if installed), and the load generator's own ceiling.

    python benchmarks/gateway_overhead.py [--quick] [--loadgen wrk|aiohttp] [--rounds N]
                                          [--only bare-aiohttp@shipway,shipway]
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

import loadgen
from _common import (
    BENCH_DIR,
    PYTHON,
    SHIPWAY,
    Servers,
    free_port,
    log,
    parse_args,
    pinned,
    report,
    table,
)

PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": "fixed", "messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 8}
).encode()
SERVER_CPU, CLIENT_CPU = "0", "1"
TARGET_OVERHEAD_MS, TARGET_RATIO = 1.5, 0.70
# The HTTP servers compared under the same bare forwarder; the first is the reference.
HTTP_SERVERS = ("httptools", "h11", "shipway", "granian")


def available(http_server: str) -> bool:
    return http_server != "granian" or importlib.util.find_spec("granian") is not None


# What each Shipway target turns on. keys: a key on every request with rate limits (high
# enough never to refuse); logs: the access log and the audit log; access_log: the access log
# alone; tracing: "off", "context" (the default: traceparent continued and returned, trace id
# logged, no spans) or "export" (a span per stage, every request sampled, built and handed to
# the batch processor with an in-process exporter that drops them); guard: the injection guard
# (block). "shipway" has everything off; "shipway+pipeline" is the whole pipeline the ≥ 70%
# target is about; "shipway+observability" is issue 11's "fully on" (≤ 10% below "shipway")
# and "shipway+tracing" its "configured but not exported" (≤ 2% below).
SHIPWAY_TARGETS: dict[str, dict[str, Any]] = {
    "shipway": {},
    "shipway-resilience": {"resilience_off": True},
    "shipway+tracing": {"tracing": "context"},
    "shipway+observability": {"access_log": True, "tracing": "export"},
    "shipway+keys+limits": {"keys": True},
    "shipway+pipeline": {"keys": True, "logs": True, "tracing": "export"},
    "shipway+pipeline+guard": {"keys": True, "logs": True, "tracing": "export", "guard": True},
    "shipway+budget": {"keys": True, "budget": True},
    "shipway+cache-hit": {"cache_hit": True},
}
# The cache-hit target asks the same deterministic question every time: after the first
# answer, every request is an exact hit that never reaches the upstream.
CACHED_BODY = json.dumps(
    {
        "model": "fixed",
        "messages": [{"role": "user", "content": "Say ok."}],
        "max_tokens": 8,
        "temperature": 0,
    }
).encode()


def shipway_config(
    upstream: str,
    data_dir: Path,
    *,
    keys: bool = False,
    logs: bool = False,
    access_log: bool = False,
    tracing: str = "off",
    guard: bool = False,
    budget: bool = False,
    cache_hit: bool = False,
    resilience_off: bool = False,
) -> dict[str, Any]:
    """``budget``: a day budget on the key (a reservation and a settle per request, memory
    ledger); ``cache_hit``: nothing else (the body makes every request a hit);
    ``resilience_off``: no attempt timeout, retries, breaker or health probes (every other
    target has the defaults on: the resilience layer's price is "shipway" against this)."""
    model = {"backend": "openai", "base_url": f"{upstream}/v1", "upstream_model": "fixed"}
    config: dict[str, Any] = {
        "server": {"access_log": logs or access_log},
        "queue": {"max_waiting": 1024},
        "embedded_models": False,
        "models": {"fixed": {**model, "max_concurrency": 256}},
        "data_dir": str(data_dir),
        "audit": {"enabled": logs},
        "telemetry": {
            "tracing": {
                "enabled": tracing != "off",
                "exporter": "discard" if tracing == "export" else "otlp",
            }
        },
    }
    if guard:
        config["guards"] = {"injection": "block"}
    if resilience_off:
        config["resilience"] = {
            "timeouts": {"first_token_s": None},
            "retries": {"max_retries": 0},
            "breaker": {"enabled": False},
            "health_check": {"enabled": False},
        }
    if budget:
        config["models"]["fixed"]["price"] = {"input": 1.0, "output": 2.0}
        config["budgets"] = {
            "rules": [{"name": "bench", "scope": "key", "window": "day", "hard_limit": 1e9}]
        }
    return config


def make_key(data_dir: Path) -> str:
    """A key with rate limits no benchmark reaches, made with the CLI as a user would."""
    argv = [SHIPWAY, "keys", "create", "--name", "bench", "--data-dir", str(data_dir)]
    argv += ["--rpm", "100000000", "--tpm", "1000000000000"]
    done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        [
            ("--loadgen", {"choices": ["auto", "wrk", "aiohttp"], "default": "auto"}),
            ("--rounds", {"type": int, "default": 5, "help": "interleaved rounds per row"}),
            (
                "--only",
                {
                    "default": "",
                    "help": "comma-separated targets to measure besides direct and "
                    "bare-aiohttp, e.g. bare-aiohttp@shipway,shipway",
                },
            ),
        ],
    )
    only = {name for name in args.only.split(",") if name}
    concurrencies = [1, 16] if args.quick else [1, 16, 64]
    seconds, warmup = (2, 1) if args.quick else (4, 4)
    rounds = 1 if args.quick else args.rounds
    tool = "aiohttp" if args.loadgen == "aiohttp" or not loadgen.have_wrk() else "wrk"
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    bodies: dict[str, bytes] = {}

    with Servers() as servers:
        # Every target is started first and measured in turn, round after round: this VM's
        # speed drifts by 10-20% over minutes, and interleaving lets the drift hit every
        # target alike. Idle targets use no CPU while another is measured.
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        argv = [PYTHON, "-m", "shipway.ops.fake_upstream", "--port", str(port)]
        servers.start("fake-upstream", pinned(CLIENT_CPU, argv), port=port)
        targets: list[tuple[str, str, list[int], dict[str, str]]] = [
            ("direct", upstream + PATH, concurrencies, {})
        ]

        forwarders = [("aiohttp", "httptools"), ("httpx", "httptools")]
        if not args.quick:
            forwarders += [("aiohttp", server) for server in HTTP_SERVERS[1:] if available(server)]
        for client, http_server in forwarders:
            port = free_port()
            argv = [PYTHON, str(BENCH_DIR / "bare_forwarder.py"), "--port", str(port)]
            argv += ["--upstream", upstream, "--client", client, "--server", http_server]
            name = f"bare-{client}" + ("" if http_server == "httptools" else f"@{http_server}")
            servers.start(name, pinned(SERVER_CPU, argv), port=port)
            levels = concurrencies if client == "aiohttp" else [16]
            targets.append((name, f"http://127.0.0.1:{port}{PATH}", levels, {}))

        shipways = list(SHIPWAY_TARGETS)
        for name in shipways:
            if only and name not in only:
                continue
            data_dir = servers.tmp / f"{name}-data"
            config = shipway_config(upstream, data_dir, **SHIPWAY_TARGETS[name])
            headers = {}
            if SHIPWAY_TARGETS[name].get("keys"):
                headers["Authorization"] = f"Bearer {make_key(data_dir)}"
            _, base = servers.shipway(name, config, cpus=SERVER_CPU)
            targets.append((name, base + PATH, concurrencies, headers))
            if SHIPWAY_TARGETS[name].get("cache_hit"):
                bodies[name] = CACHED_BODY

        other = "aiohttp" if tool == "wrk" else "wrk"
        if not args.quick and loadgen.have_wrk():
            targets.append((f"direct ({other} loadgen)", upstream + PATH, [16], {}))

        if only:
            wanted = only | {"direct", "bare-aiohttp"}
            targets = [t for t in targets if t[0] in wanted]
        for c in concurrencies:
            for round_ in range(rounds):
                for name, url, levels, headers in targets:
                    if c not in levels:
                        continue
                    how = other if "loadgen)" in name else tool
                    first = round_ == 0
                    log(f"{name}: concurrency {c}, round {round_ + 1}/{rounds} ({how})")
                    result = loadgen.run(
                        how,
                        url,
                        bodies.get(name, BODY),
                        concurrency=c,
                        seconds=seconds,
                        warmup_s=warmup if first else 0,
                        cpus=CLIENT_CPU,
                        tmp=servers.tmp,
                        headers=headers,
                    )
                    samples.setdefault((name, c), []).append(result)

    results = {key: _median_row(rows) for key, rows in samples.items()}
    ratios = {
        key: statistics.median(
            r["rps"] / b["rps"]
            for r, b in zip(rows, samples[("bare-aiohttp", key[1])], strict=True)
        )
        for key, rows in samples.items()
        if ("bare-aiohttp", key[1]) in samples
    }
    vs_shipway = {
        key: statistics.median(
            r["rps"] / b["rps"] for r, b in zip(rows, samples[("shipway", key[1])], strict=True)
        )
        for key, rows in samples.items()
        if key[0].startswith(("shipway+", "shipway-")) and ("shipway", key[1]) in samples
    }
    print_report(results, ratios, concurrencies, tool, seconds, warmup, rounds)
    if vs_shipway:
        report(
            "Each stage's price: requests/s as a share of plain `shipway` in the same rounds",
            [
                table(
                    ["target", *(f"c={c}" for c in concurrencies)],
                    [
                        [name, *(f"{vs_shipway.get((name, c), 0):.0%}" for c in concurrencies)]
                        for name in list(SHIPWAY_TARGETS)[1:]
                        if any((name, c) in vs_shipway for c in concurrencies)
                    ],
                )
            ],
            [
                "shipway-resilience is plain shipway with the resilience layer off: above 100% "
                "by what the layer costs (issue 13's target: ≤ 5% fewer requests/s, so "
                "≤ 105%).",
                "Issue 11's targets: shipway+tracing (configured, not exported) ≥ 98%; "
                "shipway+observability (access log + every request traced) ≥ 90%.",
            ],
        )


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s (its latency figures come with it)."""
    ordered = sorted(rows, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


def print_report(
    results: dict[tuple[str, int], dict[str, Any]],
    ratios: dict[tuple[str, int], float],
    concurrencies: list[int],
    tool: str,
    seconds: int,
    warmup: int,
    rounds: int,
) -> None:
    raw = table(
        ["target", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
        [
            [target, c, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]]
            for (target, c), r in results.items()
        ],
    )
    sections = ["All measurements:", raw]
    if all(("shipway", c) in results for c in concurrencies):
        sections += _overhead_sections(results, ratios, concurrencies)
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
    servers_rows = [
        [
            name,
            c,
            r["rps"],
            f"{ratios[(name, c)]:.0%}",
            r["p50_ms"],
            r["p99_ms"],
            r["errors"],
        ]
        for name in ["bare-aiohttp", *(f"bare-aiohttp@{s}" for s in HTTP_SERVERS[1:])]
        for c in concurrencies
        if (r := results.get((name, c))) is not None
    ]
    if len(servers_rows) > len(concurrencies):
        sections += [
            "HTTP server under the same bare forwarder (`bare-aiohttp` is uvicorn + httptools; "
            "`@shipway` adds Shipway's header limit, timeouts and connection cap):",
            table(
                ["server", "concurrency", "req/s", "% of httptools", "p50 ms", "p99 ms", "errors"],
                servers_rows,
            ),
        ]
    notes = [
        f"Load generator: {tool}; every target runs at once and is measured in turn, "
        f"{rounds} interleaved round(s) of {seconds} s per concurrency (a {warmup} s warm-up "
        "before the first, discarded). req/s and latency are the median round's; a "
        '"% of" figure is the median over rounds of the ratio to the bare forwarder '
        "measured in the same round.",
        f"Server under test on core {SERVER_CPU}; load generator and fake upstream on core "
        f"{CLIENT_CPU} (`taskset`).",
    ]
    if tool == "wrk":
        notes.append(
            f"wrk command per row (C = concurrency): `taskset -c {CLIENT_CPU} wrk -t1 -cC "
            f"-d{seconds}s --timeout 10s -s post.lua URL`."
        )
    report("Gateway overhead (fake upstream, model `fixed`)", sections, notes)


def _overhead_sections(
    results: dict[tuple[str, int], dict[str, Any]],
    ratios: dict[tuple[str, int], float],
    concurrencies: list[int],
) -> list[str]:
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
                f"{ratios[('shipway', c)]:.0%}",
                *(
                    f"{ratios[(name, c)]:.0%}" if (name, c) in ratios else "-"
                    for name in list(SHIPWAY_TARGETS)[1:]
                ),
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
            *(f"{name} % of bare" for name in list(SHIPWAY_TARGETS)[1:]),
        ],
        rows,
    )
    return [
        "Overhead (p50 minus direct p50):",
        summary,
        "\n".join(verdicts(results, ratios, concurrencies)),
    ]


def verdicts(
    results: dict[tuple[str, int], dict[str, Any]],
    ratios: dict[tuple[str, int], float],
    concurrencies: list[int],
) -> list[str]:
    """The targets: the latency one at c=1 (no queueing), the throughput one at c>1."""
    overhead = results[("shipway", 1)]["p50_ms"] - results[("direct", 1)]["p50_ms"]
    met = "met" if overhead <= TARGET_OVERHEAD_MS else "NOT met"
    out = [f"- p50 overhead at concurrency 1: {overhead:.2f} ms (target ≤ 1.5 ms): {met}"]
    for target in SHIPWAY_TARGETS:
        for c in concurrencies[1:]:
            if (target, c) not in ratios:
                continue
            ratio = ratios[(target, c)]
            met = "met" if ratio >= TARGET_RATIO else "NOT met"
            out.append(
                f"- {target} req/s vs bare forwarder at concurrency {c}: {ratio:.0%} (≥ 70%): {met}"
            )
    return out


if __name__ == "__main__":
    main()
