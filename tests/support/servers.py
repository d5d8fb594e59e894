"""Real servers for tests: `shipway serve` and the fake upstream, as subprocesses on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    log: Path,
    verify: ssl.SSLContext | bool = True,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, verify=verify).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s:\n{log.read_text()[-4000:]}")


class Server:
    """A subprocess server; ``log`` holds its stderr+stdout."""

    def __init__(
        self,
        argv: list[str],
        ready_path: str,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 120,
        ca_file: str | None = None,
    ) -> None:
        """``ca_file``: the server speaks HTTPS with a certificate this file vouches for."""
        self.data_dir: Path | None = None
        self.config_path: Path | None = None
        self.port = free_port()
        self.base = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="shipway-test-")
        self.log = Path(self._dir.name) / "server.log"
        self._log_file = self.log.open("wb")
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            trust = ssl.create_default_context(cafile=ca_file) if ca_file else True
            wait_http(self.base + ready_path, ready_timeout_s, self.proc, self.log, trust)
        except BaseException:
            self.stop()
            raise

    @property
    def tmp(self) -> Path:
        return Path(self._dir.name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()
        self._dir.cleanup()


# Resilience off: one attempt per request, no breaker, no health probes. For tests of what a
# single fault becomes (its status, its metric), not of how Shipway rides it out.
SINGLE_ATTEMPT: dict[str, Any] = {
    "retries": {"max_retries": 0},
    "breaker": {"enabled": False},
    "health_check": {"enabled": False},
}


def shipway_server(
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    ca_file: str | None = None,
) -> Server:
    """A ``shipway serve`` subprocess with its own data directory (``SHIPWAY_DATA_DIR``),
    unless ``env`` names one: tests never share keys or an audit log by accident."""
    argv = [sys.executable, "-m", "shipway", "serve", "--port", "{port}"]
    cfg_dir = tempfile.mkdtemp(prefix="shipway-cfg-")
    if config is not None:
        path = Path(cfg_dir) / "shipway.yaml"
        path.write_text(yaml.safe_dump(config))
        argv += ["--config", str(path)]
    env = {"SHIPWAY_DATA_DIR": str(Path(cfg_dir) / "data"), **(env or {})}
    server = Server(argv, ready_path, env=env, ca_file=ca_file)
    server.data_dir = Path(env["SHIPWAY_DATA_DIR"])
    server.config_path = Path(cfg_dir) / "shipway.yaml" if config is not None else None
    return server


def fake_upstream() -> Server:
    return Server(
        [sys.executable, "-m", "shipway.ops.fake_upstream", "--port", "{port}"],
        "/_last",
        ready_timeout_s=30,
    )


def chaos_proxy(target: str, *flags: str, **rates: float) -> Server:
    """``shipway chaos proxy`` in front of ``target``. Every fault rate is 0 unless given
    (``error_rate=0.2``, ``stall_s=1``, ``seed=7`` …); ``flags`` go on the command line as is."""
    options = {"error_rate": 0, "stall_rate": 0, "reset_rate": 0, "cut_rate": 0, **rates}
    argv = [sys.executable, "-m", "shipway", "chaos", "proxy", "--target", target]
    argv += ["--port", "{port}", "--report-s", "0", *flags]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return Server(argv, "/_chaos/stats", ready_timeout_s=30)
