"""Start-up time: from launching ``shipway serve`` (default config) to ``GET /readyz`` = 200.

The default config serves both embedded models, so ready means both model workers have
loaded their weights. Median of several runs; the first one may include a cold page cache.

    python benchmarks/startup.py [--quick]
"""

from __future__ import annotations

import statistics
import time

from _common import SHIPWAY, Servers, free_port, log, parse_args, report, table

TARGET_S = 10.0


def one_start(servers: Servers, run: int) -> float:
    port = free_port()
    argv = [SHIPWAY, "serve", "--port", str(port)]
    started = time.perf_counter()
    server = servers.start(
        f"startup-{run}", argv, ready_url=f"http://127.0.0.1:{port}/readyz", timeout_s=120
    )
    elapsed = time.perf_counter() - started
    servers.stop(server)
    return elapsed


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    runs = 1 if args.quick else 3
    times = []
    with Servers() as servers:
        for run in range(1, runs + 1):
            times.append(one_start(servers, run))
            log(f"run {run}: ready after {times[-1]:.2f} s")
    median = statistics.median(times)
    verdict = "met" if median <= TARGET_S else "NOT met"
    rows = [[i, t] for i, t in enumerate(times, 1)] + [["median", median]]
    notes = [
        "`shipway serve --port P` with no config file: `smollm2-135m` and `all-minilm-l6-v2`.",
        f"Readiness polled every 50 ms. Target ≤ {TARGET_S:.0f} s: {verdict}.",
    ]
    report("Start-up time to ready", [table(["run", "seconds to /readyz 200"], rows)], notes)


if __name__ == "__main__":
    main()
