"""Batch jobs on a real server with the official client: files, batches, output and error
files, cancel, listing, isolation between keys, input checks, upload limits, a SIGKILL in the
middle of a batch, and interactive requests served before batch lines."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from tests.support.keys import bearer, create_key, shipway_cli, wait_until
from tests.support.openai_spec import assert_conforms
from tests.support.raw_http import connect
from tests.support.servers import Server, shipway_server

FINAL = ("completed", "failed", "cancelled", "expired")
Endpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/completions"]
CHAT: Endpoint = "/v1/chat/completions"


def _up(upstream: Server, name: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "openai", "base_url": upstream.base + "/v1", "upstream_model": name, **extra}


@pytest.fixture(scope="module")
def gateway(upstream: Server) -> Iterator[Server]:
    srv = shipway_server(
        {
            "embedded_models": False,
            # Uploads get their own limit, above the one every other body keeps.
            "server": {"max_body_bytes": 16 * 1024},
            "batches": {"max_file_bytes": 64 * 1024},
            "models": {
                "echo": _up(upstream, "echo"),
                "failing": _up(upstream, "fail-400"),
                "slow": _up(upstream, "slow-0.3", max_concurrency=1),
            },
        }
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(gateway: Server) -> dict[str, str]:
    made = {
        "admin": create_key(gateway, "root", "--admin").key,
        "alice": create_key(gateway, "alice").key,
        "bob": create_key(gateway, "bob").key,
    }
    wait_until(lambda: httpx.get(gateway.base + "/v1/batches").status_code == 401, 10)
    return made


# Every official client a test makes, closed when the module ends: an open one leaves its
# sockets to the garbage collector, whose ResourceWarning would fail a later test.
_OPENED: list[openai.OpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def _client(server: Server, key: str = "unused") -> openai.OpenAI:
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=key, max_retries=0, timeout=60)
    _OPENED.append(client)
    return client


@pytest.fixture(scope="module")
def alice(gateway: Server, keys: dict[str, str]) -> openai.OpenAI:
    return _client(gateway, keys["alice"])


def _line(custom_id: str, model: str, text: str, url: str = "/v1/chat/completions") -> Any:
    if url == "/v1/embeddings":
        body: dict[str, Any] = {"model": model, "input": text}
    elif url == "/v1/completions":
        body = {"model": model, "prompt": text, "max_tokens": 5}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _upload(client: openai.OpenAI, lines: list[Any]) -> str:
    return client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch").id


def _start(client: openai.OpenAI, lines: list[Any], endpoint: Endpoint = CHAT) -> str:
    file_id = _upload(client, lines)
    return client.batches.create(
        input_file_id=file_id, endpoint=endpoint, completion_window="24h"
    ).id


def _wait(client: openai.OpenAI, batch_id: str, limit_s: float = 60) -> Any:
    state: dict[str, Any] = {}

    def final() -> bool:
        state["batch"] = client.batches.retrieve(batch_id)
        return state["batch"].status in FINAL

    wait_until(final, limit_s, interval_s=0.1)
    return state["batch"]


def _read(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _raw(
    gateway: Server, key: str, method: str, path: str, headers: Any = None, **kwargs: Any
) -> httpx.Response:
    headers = {**bearer(key), **(headers or {})}
    return httpx.request(method, gateway.base + path, headers=headers, timeout=30, **kwargs)


def test_a_batch_runs_to_completion_with_the_official_client(
    gateway: Server, keys: dict[str, str], alice: openai.OpenAI
) -> None:
    lines = [_line(f"req-{i}", "echo", f"hello {i}") for i in range(8)]
    uploaded = alice.files.create(file=("in.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "batch",
        len(_jsonl(lines)),
        "in.jsonl",
    )
    assert_conforms(
        _raw(gateway, keys["alice"], "GET", f"/v1/files/{uploaded.id}").json(), "OpenAIFile"
    )
    created = alice.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.status == "in_progress" and created.request_counts is not None
    assert created.request_counts.total == 8
    done = _wait(alice, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (8, 0)
    assert done.metadata == {"job": "nightly"} and done.error_file_id is None
    assert done.usage is not None and done.usage.output_tokens == 8 * 3  # "echo: hello i"
    assert_conforms(_raw(gateway, keys["alice"], "GET", f"/v1/batches/{done.id}").json(), "Batch")
    output = _read(alice, done.output_file_id)
    assert [row["custom_id"] for row in output] == [f"req-{i}" for i in range(8)]
    for i, row in enumerate(output):
        assert row["error"] is None and row["id"].startswith("batch_req_")
        assert row["response"]["status_code"] == 200
        body = row["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "echo"
        assert body["choices"][0]["message"]["content"] == f"echo: hello {i}"
        assert body["id"] == f"chatcmpl-{row['response']['request_id']}"
    assert done.output_file_id is not None
    assert alice.files.retrieve(done.output_file_id).purpose == "batch_output"


def test_failed_lines_go_to_the_error_file_and_are_counted(alice: openai.OpenAI) -> None:
    lines = [_line(f"l{i}", "failing" if i % 2 else "echo", f"x{i}") for i in range(6)]
    done = _wait(alice, _start(alice, lines))
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 3)
    assert [row["custom_id"] for row in _read(alice, done.output_file_id)] == ["l0", "l2", "l4"]
    errors = _read(alice, done.error_file_id)
    assert [row["custom_id"] for row in errors] == ["l1", "l3", "l5"]
    for row in errors:
        assert row["response"]["status_code"] == 400
        assert "error" in row["response"]["body"]


def test_embeddings_and_completions_batches(alice: openai.OpenAI) -> None:
    url: Endpoint = "/v1/embeddings"
    done = _wait(alice, _start(alice, [_line("e1", "echo", "one two", url)], url))
    [row] = _read(alice, done.output_file_id)
    assert row["response"]["body"]["object"] == "list"
    assert len(row["response"]["body"]["data"][0]["embedding"]) == 8
    url = "/v1/completions"
    done = _wait(alice, _start(alice, [_line("c1", "echo", "say", url)], url))
    [row] = _read(alice, done.output_file_id)
    assert row["response"]["body"]["object"] == "text_completion"
    assert row["response"]["body"]["choices"][0]["text"] == "echo: say"


def test_cancel_keeps_the_answered_lines_and_stops_the_rest(alice: openai.OpenAI) -> None:
    ids = [f"s{i}" for i in range(20)]
    batch_id = _start(alice, [_line(i, "slow", i) for i in ids])

    def one_done() -> bool:
        counts = alice.batches.retrieve(batch_id).request_counts
        return counts is not None and counts.completed >= 1

    wait_until(one_done, 30)
    cancelling = alice.batches.cancel(batch_id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = _wait(alice, batch_id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None
    answered = done.request_counts.completed
    assert 1 <= answered < 20
    # Lines run in order: the answered ones are the first ones, each once.
    assert [row["custom_id"] for row in _read(alice, done.output_file_id)] == ids[:answered]
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'cancelled'"):
        alice.batches.cancel(batch_id)


def test_a_batch_whose_key_is_revoked_fails(gateway: Server, keys: dict[str, str]) -> None:
    made = create_key(gateway, "carol")
    carol = _client(gateway, made.key)
    wait_until(lambda: _raw(gateway, made.key, "GET", "/v1/batches").status_code == 200, 10)
    batch_id = _start(carol, [_line(f"r{i}", "slow", str(i)) for i in range(40)])
    result = shipway_cli(gateway, "keys", "revoke", str(made.id))
    assert result.returncode == 0, result.stderr
    admin = _client(gateway, keys["admin"])
    done = _wait(admin, batch_id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data is not None
    assert done.errors.data[0].code == "invalid_api_key"
    assert done.request_counts is not None and done.request_counts.completed < 40
    assert_conforms(_raw(gateway, keys["admin"], "GET", f"/v1/batches/{batch_id}").json(), "Batch")


def test_listing_pages_newest_first(gateway: Server, keys: dict[str, str]) -> None:
    client = _client(gateway, keys["bob"])
    made = [_start(client, [_line("only", "echo", str(i))]) for i in range(3)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == [made[2], made[1]] and page.has_more
    rest = client.batches.list(limit=2, after=made[1])
    assert made[0] in [b.id for b in rest.data]
    body = _raw(gateway, keys["bob"], "GET", "/v1/batches", params={"limit": 2}).json()
    assert_conforms(body, "ListBatchesResponse")
    files = _raw(gateway, keys["bob"], "GET", "/v1/files", params={"purpose": "batch"}).json()
    assert_conforms(files, "ListFilesResponse")
    assert {f["purpose"] for f in files["data"]} == {"batch"} and len(files["data"]) >= 3
    assert _raw(gateway, keys["bob"], "GET", "/v1/batches", params={"limit": 0}).status_code == 400


def test_a_key_sees_only_its_own_files_and_batches(
    gateway: Server, keys: dict[str, str], alice: openai.OpenAI
) -> None:
    file_id = _upload(alice, [_line("mine", "echo", "private")])
    batch = _wait(
        alice,
        alice.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    bob = _client(gateway, keys["bob"])
    for attempt in (
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: bob.files.retrieve(file_id),
        lambda: bob.files.content(batch.output_file_id),
        lambda: bob.files.delete(file_id),
        lambda: bob.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert batch.id not in [b.id for b in bob.batches.list(limit=100).data]
    assert file_id not in [f.id for f in bob.files.list().data]
    admin = _client(gateway, keys["admin"])
    assert admin.batches.retrieve(batch.id).status == "completed"
    assert _read(admin, batch.output_file_id)[0]["custom_id"] == "mine"
    assert httpx.get(gateway.base + f"/v1/batches/{batch.id}").status_code == 401
    deleted = _raw(gateway, keys["alice"], "DELETE", f"/v1/files/{file_id}").json()
    assert_conforms(deleted, "DeleteFileResponse")
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(file_id)


@pytest.mark.parametrize(
    ("content", "endpoint", "message"),
    [
        (
            b'{"custom_id": "a"\n',
            "/v1/chat/completions",
            "line 1 of the input file: not valid JSON",
        ),
        (
            _jsonl([_line("a", "echo", "x"), _line("a", "echo", "y")]),
            "/v1/chat/completions",
            "line 2 of the input file: custom_id 'a' is used by line 1 too",
        ),
        (
            _jsonl([_line("a", "echo", "x")]),
            "/v1/embeddings",
            "line 1 of the input file: url '/v1/chat/completions' is not the batch's endpoint",
        ),
        (
            _jsonl([_line("a", "echo", "x"), _line("b", "gpt-9", "y")]),
            "/v1/chat/completions",
            "line 2 of the input file: model 'gpt-9' does not exist",
        ),
    ],
)
def test_bad_input_files_are_refused_naming_the_line(
    alice: openai.OpenAI, content: bytes, endpoint: Endpoint, message: str
) -> None:
    file_id = alice.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch").id
    with pytest.raises(openai.BadRequestError, match=message.replace("(", r"\(")):
        alice.batches.create(
            input_file_id=file_id,
            endpoint=endpoint,
            completion_window="24h",
        )


def test_bad_create_and_upload_requests(
    gateway: Server, keys: dict[str, str], alice: openai.OpenAI
) -> None:
    file_id = _upload(alice, [_line("a", "echo", "x")])
    for body, param in (
        (
            {"input_file_id": file_id, "endpoint": "/v1/images", "completion_window": "24h"},
            "endpoint",
        ),
        (
            {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "1h"},
            "completion_window",
        ),
        ({"endpoint": "/v1/embeddings", "completion_window": "24h"}, "input_file_id"),
    ):
        response = _raw(gateway, keys["alice"], "POST", "/v1/batches", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    with pytest.raises(openai.NotFoundError, match="No such File object: file-nope"):
        alice.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="purpose 'fine-tune' is not supported"):
        alice.files.create(file=("x.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")


def test_uploads_have_their_own_size_limit(
    gateway: Server, keys: dict[str, str], alice: openai.OpenAI
) -> None:
    # 32 KiB: over server.max_body_bytes (16 KiB), under batches.max_file_bytes (64 KiB).
    text = "x" * 400
    lines = [_line(f"big-{i}", "echo", text) for i in range(70)]
    assert 16 * 1024 < len(_jsonl(lines)) < 64 * 1024
    assert alice.files.create(file=("big.jsonl", io.BytesIO(_jsonl(lines))), purpose="batch").bytes
    chat = {"model": "echo", "messages": [{"role": "user", "content": "y" * 20_000}]}
    refused = _raw(gateway, keys["alice"], "POST", "/v1/chat/completions", json=chat)
    assert refused.status_code == 413 and "server.max_body_bytes" in refused.text
    too_big = b"z" * (65 * 1024)
    files = {"file": ("huge.jsonl", too_big), "purpose": (None, "batch")}
    refused = _raw(gateway, keys["alice"], "POST", "/v1/files", files=files)
    assert refused.status_code == 413 and "batches.max_file_bytes" in refused.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        boundary = b"--b0undary\r\n"
        yield boundary + b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="h.jsonl"\r\n\r\n'
        for _ in range(100):
            yield b"z" * 1024
        yield b"\r\n--b0undary--\r\n"

    refused = _raw(
        gateway,
        keys["alice"],
        "POST",
        "/v1/files",
        content=chunks(),
        headers={**bearer(keys["alice"]), "Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert refused.status_code == 413


def test_an_aborted_upload_leaves_nothing_behind(
    gateway: Server, keys: dict[str, str], alice: openai.OpenAI
) -> None:
    before = {f.id for f in alice.files.list().data}
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="cut.jsonl"\r\n\r\n'
    ) + b"z" * 20_000
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {keys['alice']}\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {len(body) + 30_000}\r\n\r\n"
    )
    sock = connect(gateway.port)
    sock.sendall(head.encode() + body)
    time.sleep(0.3)  # let the server spool what arrived
    sock.close()
    logged = lambda: '"path":"/v1/files","status":499' in gateway.log.read_text()  # noqa: E731
    wait_until(logged, 10)
    assert {f.id for f in alice.files.list().data} == before


# -- a SIGKILL in the middle of a batch ----------------------------------------------------------


def test_a_batch_survives_a_sigkill_with_every_line_answered_once(upstream: Server) -> None:
    config = {
        "embedded_models": False,
        "batches": {"concurrency": 4},
        "models": {"slow": _up(upstream, "slow-0.2")},
    }
    first = shipway_server(config)
    assert first.data_dir is not None
    data_dir = first.data_dir
    ids = [f"k{i:02d}" for i in range(50)]
    try:
        client = _client(first)
        batch_id = _start(client, [_line(i, "slow", i) for i in ids])

        def some_done() -> bool:
            counts = client.batches.retrieve(batch_id).request_counts
            return counts is not None and counts.completed >= 8

        wait_until(some_done, 30, interval_s=0.02)
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    finally:
        first.stop()
    with sqlite3.connect(data_dir / "shipway.db") as db:
        by_status = dict(db.execute("SELECT status, count(*) FROM batch_lines GROUP BY status"))
        in_flight = db.execute(
            "SELECT count(*) FROM batch_lines WHERE status = 'pending' AND lease_owner IS NOT NULL"
        ).fetchone()[0]
    assert 8 <= by_status["done"] < 50, by_status  # killed mid-way
    assert in_flight >= 1  # leased at the kill (running or next): released and run again
    second = shipway_server(config, env={"SHIPWAY_DATA_DIR": str(data_dir)})
    try:
        client = _client(second)
        done = _wait(client, batch_id)
        assert done.status == "completed" and done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (50, 0)
        output = _read(client, done.output_file_id)
        assert [row["custom_id"] for row in output] == ids  # each exactly once, in order
        texts = [row["response"]["body"]["choices"][0]["message"]["content"] for row in output]
        assert texts == [f"echo: {i}" for i in ids]
    finally:
        second.stop()


# -- interactive requests first -------------------------------------------------------------------


class GatedUpstream:
    """An OpenAI-compatible chat upstream that records the order requests arrive in and
    answers each only when the test lets one through."""

    def __init__(self) -> None:
        self.arrivals: list[str] = []
        self.gate = threading.Semaphore(0)
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        self.arrivals.append(text)
        await asyncio.to_thread(self.gate.acquire)
        answer = {
            "id": "chatcmpl-gated",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"ok {text}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
        return web.json_response(answer)

    def close(self) -> None:
        for _ in range(100):
            self.gate.release()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_an_interactive_request_is_served_before_queued_batch_lines() -> None:
    gated = GatedUpstream()
    server = None
    try:
        model = {
            "backend": "openai",
            "base_url": gated.base,
            "max_concurrency": 1,
            # One waiting place: a batch line holding it would make the interactive call a 429.
            "queue": {"max_waiting": 1},
        }
        server = shipway_server({"embedded_models": False, "models": {"gated": model}})
        base = server.base
        client = _client(server)
        batch_id = _start(client, [_line(f"b{i}", "gated", f"line {i}") for i in range(3)])
        wait_until(lambda: gated.arrivals == ["line 0"], 30)
        answer: dict[str, Any] = {}

        def interactive() -> None:
            answer["response"] = httpx.post(
                base + "/v1/chat/completions",
                json={"model": "gated", "messages": [{"role": "user", "content": "interactive"}]},
                timeout=60,
            )

        caller = threading.Thread(target=interactive)
        caller.start()

        def interactive_waits() -> bool:
            ready = httpx.get(base + "/readyz", timeout=5).json()
            return bool(ready["models"]["gated"]["queue"]["waiting"] == 1)

        wait_until(interactive_waits, 30)
        gated.gate.release()  # line 0 answers; its slot goes to the waiting request
        wait_until(lambda: len(gated.arrivals) == 2, 30)
        assert gated.arrivals[1] == "interactive"
        for _ in range(10):
            gated.gate.release()
        caller.join(60)
        assert answer["response"].status_code == 200, answer["response"].text
        assert answer["response"].json()["choices"][0]["message"]["content"] == "ok interactive"
        done = _wait(client, batch_id)
        assert done.request_counts is not None and done.request_counts.completed == 3
        assert gated.arrivals == ["line 0", "interactive", "line 1", "line 2"]
    finally:
        if server is not None:
            server.stop()
        gated.close()
