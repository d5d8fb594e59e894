"""The request queue on a real server: full → 429, deadlines → 504, priorities, disconnects."""

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.e2e.conftest import CHAT
from tests.support.servers import Server, shipway_server

LONG = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Tell a story."}],
    "max_tokens": 400,
    "ignore_eos": True,
    "temperature": 0,
}
SHORT = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def queue_server() -> Iterator[Server]:
    srv = shipway_server(
        {
            "embedded_models": True,
            # The same temperature-0 request runs again and again here: it must reach the
            # worker each time, not the response cache.
            "cache": {"exact": "off"},
            "models": {
                CHAT: {
                    "backend": "llamacpp",
                    "workers": 1,
                    "threads": 2,
                    "queue": {"max_waiting": 3},
                }
            },
        }
    )
    yield srv
    srv.stop()


def _url(server: Server) -> str:
    return server.base + "/v1/chat/completions"


async def _wait_for_queue(
    server: Server, client: httpx.AsyncClient, waiting: int, busy: bool = True
) -> None:
    """Wait (bounded) until the queue holds `waiting` requests (and the worker is busy)."""
    for _ in range(200):
        status = (await client.get(server.base + "/readyz")).json()["models"][CHAT]
        if (
            status["queue"]["waiting"] == waiting
            and (status["workers"][0]["state"] == "busy") == busy
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"queue never reached {waiting} waiting: {status}")


async def test_full_queue_is_429_with_retry_after(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        running = asyncio.create_task(client.post(_url(queue_server), json=LONG))
        await _wait_for_queue(queue_server, client, 0)
        waiting = [
            asyncio.create_task(client.post(_url(queue_server), json=SHORT)) for _ in range(3)
        ]
        await _wait_for_queue(queue_server, client, 3)
        refused = await client.post(_url(queue_server), json=SHORT)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        # Nothing accepted is lost: the running one and the three queued ones all finish.
        results = await asyncio.gather(running, *waiting)
        assert [r.status_code for r in results] == [200] * 4
        assert results[0].json()["usage"]["completion_tokens"] == 400


async def test_deadline_while_running_is_504_and_stops_the_worker(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.monotonic()
        late = await client.post(
            _url(queue_server), json={**LONG, "max_tokens": 1500, "timeout": 0.5}
        )
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < 5
        # The generation was cancelled: the worker is free long before 1500 tokens are done.
        await _wait_for_queue(queue_server, client, 0, busy=False)
        assert time.monotonic() - started < 5


async def test_deadline_while_queued_is_504(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        running = asyncio.create_task(client.post(_url(queue_server), json=LONG))
        await _wait_for_queue(queue_server, client, 0)
        queued = await client.post(
            _url(queue_server), json=SHORT, headers={"x-shipway-timeout": "0.3"}
        )
        assert queued.status_code == 504
        assert (await running).status_code == 200


async def test_priorities_are_served_high_first(queue_server: Server) -> None:
    order: list[str] = []

    async def send(client: httpx.AsyncClient, priority: str) -> None:
        response = await client.post(
            _url(queue_server), json=SHORT, headers={"x-shipway-priority": priority}
        )
        assert response.status_code == 200
        order.append(priority)

    async with httpx.AsyncClient(timeout=120) as client:
        running = asyncio.create_task(client.post(_url(queue_server), json=LONG))
        await _wait_for_queue(queue_server, client, 0)
        tasks = []
        for n, priority in enumerate(("low", "normal", "high")):
            tasks.append(asyncio.create_task(send(client, priority)))
            await _wait_for_queue(queue_server, client, n + 1)
        await asyncio.gather(running, *tasks)
    assert order == ["high", "normal", "low"]


async def test_disconnected_streaming_client_stops_generation(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream(
            "POST", _url(queue_server), json={**LONG, "max_tokens": 1800, "stream": True}
        ) as stream:
            lines = stream.aiter_lines()
            seen = 0
            async for line in lines:
                seen += line.startswith("data: ")
                if seen >= 3:
                    break
        # Leaving the block closed the connection mid-stream.
        started = time.monotonic()
        await _wait_for_queue(queue_server, client, 0, busy=False)
        assert time.monotonic() - started < 4  # 1800 tokens would take over 10 s


async def test_disconnected_waiting_client_leaves_the_queue(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        running = asyncio.create_task(client.post(_url(queue_server), json=LONG))
        await _wait_for_queue(queue_server, client, 0)
        async with httpx.AsyncClient(timeout=0.5) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(_url(queue_server), json=SHORT)
        await _wait_for_queue(queue_server, client, 0)  # dropped while the worker is still busy
        assert (await running).status_code == 200


async def test_disconnected_plain_client_stops_generation(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        async with httpx.AsyncClient(timeout=0.5) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(_url(queue_server), json={**LONG, "max_tokens": 1800})
        started = time.monotonic()
        await _wait_for_queue(queue_server, client, 0, busy=False)
        assert time.monotonic() - started < 4


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not found")


async def test_queue_wait_is_measured(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        text = (await client.get(queue_server.base + "/metrics")).text
        assert _metric(text, f'shipway_queue_wait_seconds_count{{model="{CHAT}"}}') > 0
        assert _metric(text, f'shipway_queue_rejected_total{{model="{CHAT}"}}') >= 1
        assert _metric(text, f'shipway_queue_depth{{model="{CHAT}"}}') == 0


async def test_disconnected_streaming_client_leaves_the_queue(queue_server: Server) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        running = asyncio.create_task(client.post(_url(queue_server), json=LONG))
        await _wait_for_queue(queue_server, client, 0)
        async with httpx.AsyncClient(timeout=0.5) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(_url(queue_server), json={**SHORT, "stream": True})
        await _wait_for_queue(queue_server, client, 0)  # gone while the worker is still busy
        assert (await running).status_code == 200
