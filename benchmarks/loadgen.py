"""HTTP load generators for the overhead benchmark: ``wrk`` (C) or aiohttp (Python).

Both keep ``concurrency`` keep-alive connections busy POSTing one JSON body for a warm-up
period (discarded) and then a measured period, and report requests/s and p50/p99 latency.
``wrk`` is preferred: on one core it drives far more requests/s than a Python client, so it
is not the bottleneck (gateway_overhead.py measures both against the bare upstream).

As a script, this is the aiohttp load generator; it prints one JSON object:

    python benchmarks/loadgen.py --url http://127.0.0.1:9100/v1/chat/completions -c 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import PYTHON, percentile, pinned

MAX_REQUESTS = 2_000_000  # a hard bound on top of the time bound

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "seconds": %%f, "p50_us": %%f, "p99_us": %%f, "errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_argv(url: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    return [*argv, "-s", str(script), url]


def run(
    tool: str,
    url: str,
    body: bytes,
    *,
    concurrency: int,
    seconds: int,
    warmup_s: int,
    cpus: str | None,
    tmp: Path,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One measured point: ``{"rps", "p50_ms", "p99_ms", "requests", "errors"}``."""
    headers = headers or {}
    if tool == "wrk":
        script = tmp / "post.lua"
        extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
        script.write_text(extra + _WRK_SCRIPT % body.decode())
        if warmup_s:
            _wrk(pinned(cpus, wrk_argv(url, script, concurrency, warmup_s)), warmup_s)
        out = _wrk(pinned(cpus, wrk_argv(url, script, concurrency, seconds)), seconds)
        result = {
            "requests": out["requests"],
            "rps": out["requests"] / out["seconds"],
            "p50_ms": out["p50_us"] / 1000,
            "p99_ms": out["p99_us"] / 1000,
            "errors": out["errors"],
        }
    else:
        argv = [PYTHON, __file__, "--url", url, "--body", body.decode(), "-c", str(concurrency)]
        argv += ["--seconds", str(seconds), "--warmup", str(warmup_s)]
        for name, value in headers.items():
            argv += ["--header", f"{name}: {value}"]
        done = subprocess.run(
            pinned(cpus, argv), capture_output=True, text=True, timeout=seconds + warmup_s + 60
        )
        if done.returncode != 0:
            raise RuntimeError(f"loadgen failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout)
    if result["errors"]:
        print(f"  ! {result['errors']} failed requests against {url}", file=sys.stderr)
    return result


def _wrk(argv: list[str], seconds: int) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    found = re.search(r"^WRKJSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return dict(json.loads(found.group(1)))


# -- the aiohttp load generator --------------------------------------------------------------
async def _phase(session: Any, url: str, body: bytes, concurrency: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors, sent
        while time.perf_counter() < end and sent < MAX_REQUESTS:
            sent += 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=body) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


async def _aiohttp_load(
    url: str, body: bytes, concurrency: int, seconds: float, warmup: float, extra: dict[str, str]
):
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Content-Type": "application/json", **extra}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as s:
        if warmup:
            await _phase(s, url, body, concurrency, warmup)
        return await _phase(s, url, body, concurrency, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description="aiohttp load generator (prints JSON)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE")
    args = parser.parse_args()
    import uvloop

    extra = dict(h.split(": ", 1) for h in args.header)
    coro = _aiohttp_load(
        args.url, args.body.encode(), args.concurrency, args.seconds, args.warmup, extra
    )
    print(json.dumps(uvloop.run(coro)))


if __name__ == "__main__":
    main()
