"""A crashed or hung model worker cannot take the gateway down."""

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import CHAT
from tests.support.servers import SINGLE_ATTEMPT, Server, shipway_server

LONG = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Tell a story."}],
    "max_tokens": 600,
    "ignore_eos": True,
}
SHORT = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def fault_server() -> Iterator[Server]:
    srv = shipway_server(
        {
            "embedded_models": True,
            # A crash's own status, not the retry that rides it out (test_resilience.py).
            "resilience": SINGLE_ATTEMPT,
            "workers": {"cancel_grace_s": 1.0, "restart_backoff_s": 0.1},
            "models": {CHAT: {"backend": "llamacpp", "workers": 1, "threads": 2}},
        }
    )
    yield srv
    srv.stop()


async def _worker(client: httpx.AsyncClient, server: Server, state: str) -> dict:
    for _ in range(600):
        ready = (await client.get(server.base + "/readyz")).json()
        worker = ready["models"][CHAT]["workers"][0]
        if worker["state"] == state:
            return worker
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker never became {state}: {worker}")


async def test_sigkill_mid_request_is_503_and_queued_work_survives(fault_server: Server) -> None:
    url = fault_server.base + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=120) as client:
        before = await _worker(client, fault_server, "idle")
        doomed = asyncio.create_task(client.post(url, json=LONG))
        busy = await _worker(client, fault_server, "busy")
        queued = asyncio.create_task(client.post(url, json=SHORT))
        await asyncio.sleep(0.2)
        os.kill(busy["pid"], signal.SIGKILL)
        failed = await doomed
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "worker_crashed"
        assert failed.headers["retry-after"] == "1"
        # The request that was waiting is served by the restarted worker: nothing accepted is lost.
        served = await queued
        assert served.status_code == 200, served.text
        after = await _worker(client, fault_server, "idle")
        assert after["pid"] != before["pid"]
        assert after["restarts"] == before["restarts"] + 1
        assert "died mid-request" in after["last_error"]
        assert (await client.get(fault_server.base + "/healthz")).status_code == 200


async def test_hung_worker_is_timed_out_killed_and_replaced(fault_server: Server) -> None:
    url = fault_server.base + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=120) as client:
        before = await _worker(client, fault_server, "idle")
        hung = asyncio.create_task(client.post(url, json={**LONG, "timeout": 1.5}))
        busy = await _worker(client, fault_server, "busy")
        os.kill(busy["pid"], signal.SIGSTOP)  # a model that stops making progress
        response = await hung
        assert response.status_code == 504
        after = await _worker(client, fault_server, "idle")
        assert after["pid"] != before["pid"]
        assert "did not stop" in after["last_error"]
        served = await client.post(url, json=SHORT)
        assert served.status_code == 200


async def test_readiness_stays_up_while_a_worker_that_has_loaded_restarts(
    fault_server: Server,
) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        worker = await _worker(client, fault_server, "idle")
        os.kill(worker["pid"], signal.SIGKILL)
        states: list[str] = []
        for _ in range(600):
            response = await client.get(fault_server.base + "/readyz")
            # One worker being replaced is not the model (or the gateway) being down.
            assert response.status_code == 200, response.text
            model = response.json()["models"][CHAT]
            if not states or states[-1] != model["state"]:
                states.append(model["state"])
            if "restarting" in states and model["state"] == "serving":
                break
            await asyncio.sleep(0.01)
        assert states[-2:] == ["restarting", "serving"], states
        assert model["ready"] is True
        assert model["workers"][0]["pid"] != worker["pid"]


def test_model_that_cannot_load_fails_fast_with_the_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.gguf"
    garbage.write_bytes(b"this is not a GGUF file" * 100)
    server = shipway_server(
        {
            "embedded_models": False,
            "workers": {"restart_backoff_s": 0.2},
            "models": {"broken": {"backend": "llamacpp", "path": str(garbage)}},
        },
        ready_path="/healthz",
    )
    try:
        for _ in range(300):
            ready = httpx.get(server.base + "/readyz")
            worker = ready.json()["models"]["broken"]["workers"][0]
            if worker["failed_loads"] > 0:
                break
            time.sleep(0.05)
        assert ready.status_code == 503
        assert worker["last_error"]
        started = time.monotonic()
        body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 503
        assert time.monotonic() - started < 2  # not queued until the 120 s deadline
        assert "cannot be served" in response.json()["error"]["message"]
        assert response.headers["retry-after"] == "30"
    finally:
        server.stop()


async def test_hung_embedding_worker_is_killed_and_replaced(fault_server: Server) -> None:
    url = fault_server.base + "/v1/embeddings"
    async with httpx.AsyncClient(timeout=60) as client:
        status = (await client.get(fault_server.base + "/readyz")).json()
        before = status["models"]["all-minilm-l6-v2"]["workers"][0]
        os.kill(before["pid"], signal.SIGSTOP)
        late = await client.post(
            url, json={"model": "all-minilm-l6-v2", "input": "x", "timeout": 0.5}
        )
        assert late.status_code == 504
        for _ in range(200):
            status = (await client.get(fault_server.base + "/readyz")).json()
            after = status["models"]["all-minilm-l6-v2"]["workers"][0]
            if after["pid"] != before["pid"] and after["state"] == "idle":
                break
            await asyncio.sleep(0.1)
        assert after["pid"] != before["pid"], after
        assert "did not stop" in after["last_error"]
        served = await client.post(url, json={"model": "all-minilm-l6-v2", "input": "x"})
        assert served.status_code == 200
