"""How long a worker waits before it restarts, and what a restart means for readiness."""

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from shipway.backends.base import EmbedRequest
from shipway.config import WorkerSettings, load_settings
from shipway.engine.engine import ModelRunner
from shipway.engine.worker_process import WorkerProcess
from shipway.telemetry.metrics import Metrics

READY = '{"type": "ready", "pid": 1, "info": {}}'
BASE_S = 0.05


def _worker(tmp_path: Path, body: str) -> WorkerProcess:
    script = tmp_path / "worker.py"
    script.write_text(f"import sys, time\nprint({READY!r}, flush=True)\n{body}\n")
    return WorkerProcess(
        model="m",
        index=0,
        spec={"threads": 1},
        settings=WorkerSettings(restart_backoff_s=BASE_S, cancel_grace_s=0.05),
        on_idle=lambda w: None,
        on_gone=lambda w: None,
        metrics=Metrics(),
        command=(sys.executable, str(script)),
    )


async def _idle(worker: WorkerProcess, restarts: int) -> None:
    for _ in range(400):
        if worker.state == "idle" and worker.restarts >= restarts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"worker not idle after {restarts} restarts: {worker.status()}")


def _delays(logs: list[dict[str, Any]]) -> list[float]:
    return [e["after_s"] for e in logs if e["event"] == "worker restarting"]


async def test_a_worker_killed_for_ignoring_cancels_restarts_without_growing_backoff(
    tmp_path: Path,
) -> None:
    with structlog.testing.capture_logs() as logs:
        worker = _worker(tmp_path, "for line in sys.stdin:\n    pass  # never answers")
        task = asyncio.create_task(worker.run())
        for round_ in range(3):
            await _idle(worker, round_)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await worker.embed(EmbedRequest(inputs=["x"]))
        await _idle(worker, 3)
        await worker.stop()
        task.cancel()
    assert _delays(logs) == [BASE_S] * 3
    assert "did not stop" in (worker.last_error or "")


async def test_a_crash_loop_still_backs_off(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        worker = _worker(tmp_path, "sys.exit(1)")
        task = asyncio.create_task(worker.run())
        for _ in range(400):
            if len(_delays(logs)) >= 3:
                break
            await asyncio.sleep(0.01)
        await worker.stop()
        task.cancel()
    assert _delays(logs)[:3] == [BASE_S, 2 * BASE_S, 4 * BASE_S]


def test_a_model_that_loaded_once_stays_ready_while_its_worker_restarts() -> None:
    settings = load_settings()
    runner = ModelRunner("smollm2-135m", settings.models["smollm2-135m"], settings, Metrics(), {})
    worker = runner.workers[0]
    assert (runner.state, runner.ready) == ("loading", False)
    worker.state, worker.has_loaded = "idle", True
    assert (runner.state, runner.ready) == ("serving", True)
    worker.state = "dead"
    assert (runner.state, runner.ready) == ("restarting", True)
    worker.state = "starting"
    assert (runner.state, runner.ready) == ("restarting", True)
    worker.failed_loads = 1  # the file went away: the model cannot come back by itself
    assert (runner.state, runner.ready) == ("failing", False)
    worker.state = "stopped"
    assert (runner.state, runner.ready) == ("stopped", False)
    assert runner.status()["state"] == "stopped"
