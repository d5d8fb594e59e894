"""Start-up, graceful drain on SIGTERM, and the CLI commands."""

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from tests.e2e.conftest import CHAT
from tests.support.servers import Server, shipway_server

ROOT = Path(__file__).parents[2]


def test_sigterm_drains_in_flight_requests_then_stops_workers() -> None:
    server = shipway_server({"embedded_models": True})
    try:
        _drain_and_check(server)
    finally:
        server.stop()


def _drain_and_check(server: Server) -> None:
    workers = [c.pid for c in psutil.Process(server.proc.pid).children(recursive=True)]
    assert len(workers) == 2
    result: dict[str, httpx.Response] = {}
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Tell a story."}],
        "max_tokens": 150,
        "ignore_eos": True,
    }

    def call() -> None:
        result["r"] = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)

    thread = threading.Thread(target=call)
    thread.start()
    for _ in range(200):
        ready = httpx.get(server.base + "/readyz").json()
        if ready["models"][CHAT]["workers"][0]["state"] == "busy":
            break
    server.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert result["r"].status_code == 200, result["r"].text + server.log.read_text()[-4000:]
    assert result["r"].json()["usage"]["completion_tokens"] == 150
    # uvicorn re-raises the signal once drained, the conventional exit for a SIGTERM.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_config_check_accepts_the_example_and_rejects_a_typo(tmp_path: Path) -> None:
    good = _cli("config", "check", "examples/shipway.yaml")
    assert good.returncode == 0, good.stderr
    assert "gpt-4o-mini" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("queue:\n  max_wait: 3\n")
    result = _cli("config", "check", str(bad))
    assert result.returncode == 2
    assert "queue.max_wait: unknown key; did you mean `max_waiting`?" in result.stderr


@pytest.mark.parametrize("args", [("models",), ("models", "--config", "examples/shipway.yaml")])
def test_models_command_lists_models(args: tuple[str, ...]) -> None:
    result = _cli(*args)
    assert result.returncode == 0
    assert "smollm2-135m" in result.stdout and "all-minilm-l6-v2" in result.stdout
