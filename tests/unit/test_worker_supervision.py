"""The supervisor against real misbehaving worker programs (small scripts run as processes)."""

import asyncio
import sys
from pathlib import Path

from shipway.config import WorkerSettings
from shipway.engine.worker_process import WorkerProcess
from shipway.telemetry.metrics import Metrics

READY = '{"type": "ready", "pid": 1, "info": {}}'


def _worker(tmp_path: Path, body: str, ready: bool = True) -> tuple[WorkerProcess, list[str]]:
    script = tmp_path / "worker.py"
    hello = f"print({READY!r}, flush=True)\n" if ready else ""
    script.write_text(f"import sys, time\n{hello}{body}\n")
    events: list[str] = []
    worker = WorkerProcess(
        model="m",
        index=0,
        spec={"threads": 1},
        settings=WorkerSettings(restart_backoff_s=0.05),
        on_idle=lambda w: events.append("idle"),
        on_gone=lambda w: events.append("gone"),
        metrics=Metrics(),
        command=(sys.executable, str(script)),
    )
    return worker, events


async def test_a_truncated_reply_is_a_crash_and_the_worker_is_restarted(tmp_path: Path) -> None:
    worker, events = _worker(
        tmp_path, 'time.sleep(0.1)\nsys.stdout.write(\'{"id": 1, "type": "del\')\nsys.exit(1)'
    )
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        if worker.restarts >= 2:
            break
        await asyncio.sleep(0.05)
    assert not task.done(), task.exception() if task.done() else None
    assert worker.restarts >= 2
    assert events.count("idle") >= 2
    await worker.stop()
    task.cancel()


async def test_a_worker_that_never_loads_is_retried_and_reported(tmp_path: Path) -> None:
    worker, _ = _worker(tmp_path, "print('cannot load', file=sys.stderr)\nsys.exit(3)", ready=False)
    task = asyncio.create_task(worker.run())
    for _ in range(100):
        if worker.failed_loads >= 2:
            break
        await asyncio.sleep(0.05)
    assert worker.failed_loads >= 2 and worker.state != "idle"
    assert worker.last_error
    await worker.stop()
    task.cancel()
