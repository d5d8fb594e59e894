"""A small OpenAI-compatible server that misbehaves on request, for fault injection and benchmarks.

    python -m shipway.ops.fake_upstream --port 9100

The ``model`` field picks the behaviour, so a Shipway config maps aliases onto faults with
``upstream_model``:

    echo            answer "echo: <last user message>" (streamed word by word)
    fixed           answer a constant tiny body as fast as possible (overhead benchmarks)
    fail-<status>   answer that HTTP status with an OpenAI error body (429 adds Retry-After: 7)
    slow-<seconds>  wait, then answer like echo
    break-stream    stream two chunks, then drop the connection
    error-stream    stream one chunk, then an error event
    garbage         answer 200 with a body that is not JSON
    cut-body        promise 1000 bytes, send 11, drop the connection
    huge-<MiB>      answer a valid completion padded to that many MiB

``GET /_last`` returns the last request's headers and body, so tests can see what Shipway sent.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from typing import Any

import orjson
from aiohttp import web

__all__ = ["build_fake_upstream", "main"]

_FIXED = orjson.dumps(
    {
        "id": "chatcmpl-fixed",
        "object": "chat.completion",
        "created": 0,
        "model": "fixed",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)
_LAST: web.AppKey[dict[str, Any]] = web.AppKey("last", dict)


def _error(status: int, message: str) -> web.Response:
    headers = {"Retry-After": "7"} if status == 429 else {}
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode()
    )


def _reply_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content") or ""
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content)
    return f"echo: {content}"


def _completion(model: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    words = len(text.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": words,
            "total_tokens": prompt_tokens + words,
        },
    }


async def _chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    if not raw:
        return _error(400, "empty body")
    body = orjson.loads(raw)
    model = str(body.get("model", "echo"))
    request.app[_LAST].clear()
    request.app[_LAST].update(headers={str(k): v for k, v in request.headers.items()}, body=body)
    if model == "fixed":
        return web.Response(body=_FIXED, content_type="application/json")
    if model.startswith("fail-"):
        return _error(int(model.removeprefix("fail-")), f"fake upstream failure {model}")
    if model.startswith("slow-"):
        await asyncio.sleep(float(model.removeprefix("slow-")))
    if model == "cut-body":
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"id": "cut')
        assert request.transport is not None
        request.transport.close()
        return response
    if model == "garbage":
        return web.Response(text="<html>not json</html>", content_type="text/html")
    if model.startswith("huge-"):
        size = int(float(model.removeprefix("huge-")) * 1024 * 1024)
        return web.Response(
            body=orjson.dumps(_completion(model, "x" * size, 1)), content_type="application/json"
        )
    text = _reply_text(body)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    if not body.get("stream"):
        return web.Response(
            body=orjson.dumps(_completion(model, text, prompt_tokens)),
            content_type="application/json",
        )
    return await _stream(request, body, model, text, prompt_tokens)


async def _stream(
    request: web.Request, body: dict[str, Any], model: str, text: str, prompt_tokens: int
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(data) + b"\n\n"

    await response.write(chunk({"role": "assistant", "content": ""}))
    words = text.split(" ")
    for i, word in enumerate(words):
        await response.write(chunk({"content": word if i == 0 else " " + word}))
        if model == "break-stream" and i == 1:
            assert request.transport is not None
            request.transport.close()
            return response
        if model == "error-stream":
            await response.write(b'data: {"error": {"message": "fake mid-stream failure"}}\n\n')
            return response
    await response.write(chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        data = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        await response.write(b"data: " + orjson.dumps(data) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def _embeddings(request: web.Request) -> web.Response:
    body = await request.json(loads=orjson.loads)
    request.app[_LAST].clear()
    request.app[_LAST].update(headers={str(k): v for k, v in request.headers.items()}, body=body)
    model = str(body.get("model"))
    if model.startswith("fail-"):
        return _error(int(model.removeprefix("fail-")), "fake upstream failure")
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, text in enumerate(inputs):
        digest = hashlib.sha256(str(text).encode()).digest()
        data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]})
    tokens = sum(len(str(t).split()) for t in inputs)
    out = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def _last(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[_LAST]), content_type="application/json")


def build_fake_upstream() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_LAST] = {}
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/_last", _last)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    web.run_app(build_fake_upstream(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
