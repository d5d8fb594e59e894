"""Shared helpers for the benchmark scripts: ports, server subprocesses, stats, tables.

Every server a benchmark starts runs in its own process group (so Shipway's model workers
go with it) and is killed when the ``Servers`` context exits, on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
PYTHON = sys.executable
SHIPWAY = str(Path(sys.executable).with_name("shipway"))


def parse_args(description: str, extra: Sequence[tuple[str, dict[str, Any]]] = ()) -> Any:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    for flag, options in extra:
        parser.add_argument(flag, **options)
    # A benchmark killed by SIGTERM still runs its cleanup (context managers, finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return parser.parse_args()


def this_command() -> str:
    """The command line that ran this script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without SHIPWAY_* settings, so only the benchmark's config applies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")}
    return {**env, **extra}


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def write_yaml(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        # Whatever is left of the group (model workers, a hung server) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class Servers:
    """Start server subprocesses; all of them are killed when the ``with`` block ends."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="shipway-bench-")
        self.tmp = Path(self._tmp.name)
        self._running: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self._running):
            server.stop()
        self._running.clear()
        self._tmp.cleanup()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        ready_url: str | None = None,
        port: int | None = None,
        timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> Server:
        """Start ``argv`` and wait until ``ready_url`` answers 200 (or ``port`` accepts)."""
        log_path = self.tmp / f"{name}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env or clean_env(),
                start_new_session=True,
                cwd=ROOT,
            )
        server = Server(name, proc, log_path)
        self._running.append(server)
        wait_ready(server, ready_url=ready_url, port=port, timeout_s=timeout_s)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        self._running.remove(server)

    def shipway(
        self, name: str, config: dict[str, Any], *, cpus: str | None = None, timeout_s: float = 180
    ) -> tuple[Server, str]:
        """``shipway serve`` with ``config`` on a free port; returns it and its base URL."""
        port = free_port()
        path = write_yaml(self.tmp, f"{name}.yaml", config)
        argv = pinned(cpus, [SHIPWAY, "serve", "--config", str(path), "--port", str(port)])
        base = f"http://127.0.0.1:{port}"
        server = self.start(name, argv, ready_url=f"{base}/readyz", timeout_s=timeout_s)
        return server, base


def wait_ready(
    server: Server, *, ready_url: str | None, port: int | None, timeout_s: float
) -> float:
    """Poll until ready; return the seconds waited. Raises if the process dies or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        server.check_alive()
        if ready_url and _http_ok(ready_url):
            return time.monotonic() - started
        if port and _tcp_open(port):
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready after {timeout_s:.0f}s:\n{server.tail()}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tcp_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:,.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, sections: Sequence[str], notes: Sequence[str] = ()) -> None:
    """Print one benchmark's markdown result block on stdout (run_all.py collects it)."""
    out = [f"### {title}", "", *[s + "\n" for s in sections]]
    out += [f"- {note}" for note in notes]
    out += ["", f"Command: `{this_command()}`", ""]
    print("\n".join(out), flush=True)
