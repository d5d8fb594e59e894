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
    tool-call       call the request's first tool with {"text": <last user message>}

``POST /v1/completions`` (legacy text completions) answers ``echo: <prompt>`` the same way,
with the prompt in front under ``echo: true`` and made-up legacy ``logprobs`` when asked; the
faults that come before an answer (fail, slow, cut-body, garbage), huge and the stream
faults apply to it too.

``POST /v1/responses`` answers the same echo as a Response object, or streamed as OpenAI's
typed events; the faults before an answer and break-stream / error-stream apply to it too.

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
    fault = await _fault(request, model)
    if fault is not None:
        return fault
    if model.startswith("huge-"):
        size = int(float(model.removeprefix("huge-")) * 1024 * 1024)
        return web.Response(
            body=orjson.dumps(_completion(model, "x" * size, 1)), content_type="application/json"
        )
    if model == "tool-call" and body.get("tools"):
        return await _tool_call(request, body)
    text = _reply_text(body)
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    if not body.get("stream"):
        return web.Response(
            body=orjson.dumps(_completion(model, text, prompt_tokens)),
            content_type="application/json",
        )
    return await _stream(request, body, model, text, prompt_tokens)


async def _fault(request: web.Request, model: str) -> web.StreamResponse | None:
    """The answer a fault model gives before any text (or None: answer normally)."""
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
    return None


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


async def _tool_call(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    name = body["tools"][0]["function"]["name"]
    arguments = orjson.dumps({"text": _reply_text(body).removeprefix("echo: ")}).decode()
    call: dict[str, Any] = {"id": "call_fake", "type": "function", "function": {"name": name}}
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

    def answer(choice: dict[str, Any], kind: str, **extra: Any) -> dict[str, Any]:
        head = {"id": "chatcmpl-fake", "object": kind, "created": 0, "model": "tool-call"}
        return {**head, "choices": [{"index": 0, "logprobs": None, **choice}], **extra}

    if not body.get("stream"):
        full = {**call, "function": {"name": name, "arguments": arguments}}
        message = {"role": "assistant", "content": None, "tool_calls": [full]}
        out = answer({"message": message, "finish_reason": "tool_calls"}, "chat.completion")
        return web.Response(
            body=orjson.dumps({**out, "usage": usage}), content_type="application/json"
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    half = len(arguments) // 2
    deltas = [
        {
            "role": "assistant",
            "tool_calls": [{"index": 0, **call, "function": {"name": name, "arguments": ""}}],
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
    ]
    for delta in deltas:
        chunk = answer({"delta": delta, "finish_reason": None}, "chat.completion.chunk")
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    end = answer({"delta": {}, "finish_reason": "tool_calls"}, "chat.completion.chunk")
    await response.write(b"data: " + orjson.dumps(end) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        tail = {**answer({}, "chat.completion.chunk"), "choices": [], "usage": usage}
        await response.write(b"data: " + orjson.dumps(tail) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def _text_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    request.app[_LAST].clear()
    request.app[_LAST].update(headers={str(k): v for k, v in request.headers.items()}, body=body)
    model = str(body.get("model", "echo"))
    fault = await _fault(request, model)
    if fault is not None:
        return fault
    prompt = body.get("prompt")
    prompt = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
    words = f"echo: {prompt}".split(" ")
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    if model.startswith("huge-"):
        pieces = ["x" * int(float(model.removeprefix("huge-")) * 1024 * 1024)]
    if body.get("echo"):
        pieces.insert(0, prompt)
    usage = {
        "prompt_tokens": len(prompt.split()),
        "completion_tokens": len(words),
        "total_tokens": len(prompt.split()) + len(words),
    }

    def choice(text: str, finish: str | None, offset: int) -> dict[str, Any]:
        logprobs = None
        if body.get("logprobs") is not None and text:
            logprobs = {
                "tokens": [text],
                "token_logprobs": [-0.5],
                "top_logprobs": [{text: -0.5}],
                "text_offset": [offset],
            }
        return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}

    def answer(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            **extra,
        }

    if not body.get("stream"):
        out = answer([choice("".join(pieces), "stop", 0)], usage=usage)
        return web.Response(body=orjson.dumps(out), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    offset = 0
    for i, piece in enumerate(pieces):
        event = answer([choice(piece, None, offset)])
        offset += len(piece)
        await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if model == "break-stream" and i == 1:
            assert request.transport is not None
            request.transport.close()
            return response
        if model == "error-stream":
            await response.write(b'data: {"error": {"message": "fake mid-stream failure"}}\n\n')
            return response
    await response.write(b"data: " + orjson.dumps(answer([choice("", "stop", offset)])) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(b"data: " + orjson.dumps(answer([], usage=usage)) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    return response


async def _responses(request: web.Request) -> web.StreamResponse:
    body = await request.json(loads=orjson.loads)
    request.app[_LAST].clear()
    request.app[_LAST].update(headers={str(k): v for k, v in request.headers.items()}, body=body)
    model = str(body.get("model", "echo"))
    fault = await _fault(request, model)
    if fault is not None:
        return fault
    items = body.get("input")
    last = items if isinstance(items, str) else (items or [{}])[-1].get("content", "")
    if isinstance(last, list):
        last = " ".join(part.get("text", "") for part in last)
    words = f"echo: {last}".split(" ")
    text = " ".join(words)
    usage = {
        "input_tokens": len(str(last).split()),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": len(words),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": len(str(last).split()) + len(words),
    }
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant"}

    def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        out = {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "metadata": {},
            "temperature": body.get("temperature", 1.0),
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
        }
        return {**out, "usage": usage} if status == "completed" else out

    if not body.get("stream"):
        answer = response("completed", [{**item, "content": [part]}])
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await stream.prepare(request)
    sequence = 0

    async def send(kind: str, **fields: Any) -> None:
        nonlocal sequence
        event = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        await stream.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n")

    where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
    await send("response.created", response=response("in_progress", []))
    await send("response.in_progress", response=response("in_progress", []))
    await send("response.output_item.added", output_index=0, item={**item, "content": []})
    await send("response.content_part.added", **where, part={**part, "text": ""})
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        await send("response.output_text.delta", **where, delta=piece, logprobs=[])
        if model == "break-stream" and i == 1:
            assert request.transport is not None
            request.transport.close()
            return stream
        if model == "error-stream":
            await send("error", code="server_error", message="fake mid-stream failure", param=None)
            return stream
    await send("response.output_text.done", **where, text=text, logprobs=[])
    await send("response.content_part.done", **where, part=part)
    await send("response.output_item.done", output_index=0, item={**item, "content": [part]})
    await send("response.completed", response=response("completed", [{**item, "content": [part]}]))
    return stream


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
    app.router.add_post("/v1/completions", _text_completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/v1/responses", _responses)
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
