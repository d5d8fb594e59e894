"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, OpenAI) as a backend.

aiohttp rather than httpx: as a proxy client it was several times faster here (see
docs/performance.md). One pooled, keep-alive session per upstream; streams are relayed chunk
by chunk as they arrive. Upstream failures become ``UpstreamError``s with a status that says
whose fault it is: the client's (4xx passed through), the upstream's (502), or time (504).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import orjson

from shipway.backends.base import ChatRequest, EmbedRequest, EmbedResult
from shipway.config import OpenAIUpstreamModel
from shipway.errors import InvalidRequest, UpstreamError

__all__ = ["OpenAIHTTPBackend", "sse_lines"]

_MAX_SSE_LINE = 16 * 1024 * 1024
_MAX_ERROR_BODY = 64 * 1024
_PASSED_THROUGH = {400, 404, 409, 413, 415, 422, 429}
# The events that end a Responses stream (`/v1/responses` forwarded as sent).
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Shipway's own `timeout`, and fields with which SDK-style proxies (LiteLLM and the like)
# let a body choose the endpoint or credentials: where a request goes and with what key
# comes from the configuration only, so these never reach an upstream that might honour them.
_NOT_FORWARDED = frozenset(
    {
        "timeout",
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "organization",
        "extra_headers",
        "custom_llm_provider",
    }
)


class OpenAIHTTPBackend:
    def __init__(self, alias: str, settings: OpenAIUpstreamModel, api_key: str | None) -> None:
        self.alias = alias
        self.settings = settings
        self.upstream_model = settings.upstream_model or alias
        self._headers = {"Content-Type": "application/json"}
        self._api_key = api_key
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            keepalive_timeout=self.settings.keepalive_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s),
            headers=self._headers,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, path: str) -> str:
        return f"{self.settings.base_url}/{path}"

    def _body(self, body: dict[str, Any], **changes: Any) -> bytes:
        out = {k: v for k, v in body.items() if k not in _NOT_FORWARDED}
        out.update(model=self.upstream_model, **changes)
        try:
            return orjson.dumps(out)
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
            raise InvalidRequest(f"the request body cannot be forwarded: {exc}") from None

    async def _post(self, path: str, data: bytes) -> aiohttp.ClientResponse:
        assert self._session is not None, "start() the backend first"
        try:
            response = await self._session.post(self._url(path), data=data)
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            # The upstream's fault, not the request's deadline: retried and failed over.
            raise UpstreamError(
                f"connecting to the upstream of {self.alias!r} at {self.settings.base_url} "
                f"took over {self.settings.connect_timeout_s:g}s",
                status=504,
                kind="timeout",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                f"cannot reach the upstream of model {self.alias!r} at "
                f"{self.settings.base_url}: {exc!r}",
                status=502,
                kind="unreachable",
            ) from exc
        if response.status >= 400:
            await self._raise_for(response)
        return response

    async def _read(self, response: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
        """The body, or its first ``limit`` bytes; a body cut short is the upstream's fault."""
        try:
            if limit is None:
                return await response.read()
            parts: list[bytes] = []
            got = 0
            while got < limit and (part := await response.content.read(limit - got)):
                parts.append(part)
                got += len(part)
            return b"".join(parts)
        except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            raise UpstreamError(
                f"upstream of model {self.alias!r} broke off its answer: {exc!r}", kind="broken"
            ) from exc

    async def _read_answer(self, response: aiohttp.ClientResponse) -> bytes:
        """A successful answer, refused past ``max_answer_bytes`` without holding more."""
        limit = self.settings.max_answer_bytes
        declared = response.content_length
        if declared is None or declared > limit:
            raw = await self._read(response, limit=limit + 1)
        else:
            raw = await self._read(response)
        if len(raw) > limit:
            response.close()  # the rest is never read: this connection is not reused
            raise UpstreamError(
                f"upstream of model {self.alias!r} sent an answer larger than "
                f"{limit} bytes (models.{self.alias}.max_answer_bytes)",
                kind="too_large",
            )
        return raw

    def _scrubbed(self, message: str) -> str:
        """An upstream's message without our key in it: some servers quote the key they got
        ("Incorrect API key provided: sk-…"), and the message is relayed to the client."""
        key = self._api_key
        if key and key in message:
            message = message.replace(key, "[upstream key]")
        if key and len(key) > 8 and key[:8] in message:
            # A partly masked quote ("sk-abc12***…") still names our key's prefix.
            message = message.replace(key[:8], "[upstream key]")
        return message

    async def _raise_for(self, response: aiohttp.ClientResponse) -> None:
        try:
            raw = await self._read(response, limit=_MAX_ERROR_BODY)  # an error page can be huge
        finally:
            response.release()
        message = raw.decode("utf-8", errors="replace")[:500]
        code: str | None = None
        try:
            error = orjson.loads(raw).get("error")
            if isinstance(error, dict):
                message = str(error.get("message") or message)
                code = error.get("code")
            elif isinstance(error, str):
                message = error
        except (orjson.JSONDecodeError, AttributeError):
            pass
        message = self._scrubbed(message)
        status = response.status
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if status in _PASSED_THROUGH:
            raise UpstreamError(
                f"upstream of model {self.alias!r} answered {status}: {message}",
                status=status,
                code=code or "upstream_rejected",
                retry_after=retry_after,
                error_type="invalid_request_error" if status != 429 else "rate_limit_error",
                kind="rejected" if status != 429 else "rate_limited",
            )
        if status in (401, 403):
            raise UpstreamError(
                f"upstream of model {self.alias!r} refused our credentials ({status}): {message}; "
                f"check the key in ${self.settings.api_key_env or '(api_key_env not set)'}",
                status=502,
                code="upstream_auth_failed",
                kind="auth_failed",
            )
        raise UpstreamError(
            f"upstream of model {self.alias!r} failed with {status}: {message}",
            status=502,
            retry_after=retry_after,
            kind="server_error",
        )

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        path, changes = _endpoint(request)
        response = await self._post(path, self._body(request.body, stream=False, **changes))
        try:
            data = await self._read_answer(response)
        finally:
            response.release()
        return _json_object(data, self.alias)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]:
        options = {**(request.body.get("stream_options") or {}), "include_usage": True}
        path, changes = _endpoint(request)
        response = await self._post(
            path, self._body(request.body, stream=True, stream_options=options, **changes)
        )
        try:
            if response.content_type != "text/event-stream":
                raise UpstreamError(
                    f"upstream of model {self.alias!r} answered a stream request with "
                    f"{response.content_type!r}, not text/event-stream"
                )
            finished = False
            async for line in sse_lines(response.content.iter_any(), self.alias):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                chunk = _json_object(payload, self.alias)
                if "error" in chunk:
                    error = chunk["error"]
                    detail = error.get("message") if isinstance(error, dict) else error
                    raise UpstreamError(
                        f"upstream of model {self.alias!r} failed mid-stream: "
                        f"{self._scrubbed(str(detail))}",
                        kind="error_event",
                    )
                finished = finished or any(
                    c.get("finish_reason") for c in chunk.get("choices") or ()
                )
                yield chunk
            if not finished:
                raise UpstreamError(
                    f"upstream of model {self.alias!r} ended the stream before finishing",
                    kind="broken",
                )
        except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            raise UpstreamError(
                f"upstream of model {self.alias!r} broke off the stream: {exc!r}", kind="broken"
            ) from exc
        finally:
            response.release()

    # -- /v1/responses, forwarded as sent (models with `responses_api`) ------------------------
    async def respond(self, body: dict[str, Any]) -> dict[str, Any]:
        """A Responses body posted to the upstream's ``responses``; its Response object."""
        response = await self._post("responses", self._body(body, stream=False))
        try:
            data = await self._read_answer(response)
        finally:
            response.release()
        return _json_object(data, self.alias)

    async def stream_response(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The upstream's typed events as they come. An ``error`` event raises, as a chat
        stream's does; a stream that ends before its final event is the upstream's fault."""
        response = await self._post("responses", self._body(body, stream=True))
        try:
            if response.content_type != "text/event-stream":
                raise UpstreamError(
                    f"upstream of model {self.alias!r} answered a stream request with "
                    f"{response.content_type!r}, not text/event-stream"
                )
            finished = False
            async for line in sse_lines(response.content.iter_any(), self.alias):
                payload = line[5:].strip() if line.startswith(b"data:") else b""
                if not payload or payload == b"[DONE]":
                    continue
                event = _json_object(payload, self.alias)
                if event.get("type") == "error" or ("error" in event and "type" not in event):
                    error = event.get("error")
                    detail = event.get("message") or (
                        error.get("message") if isinstance(error, dict) else error
                    )
                    raise UpstreamError(
                        f"upstream of model {self.alias!r} failed mid-stream: "
                        f"{self._scrubbed(str(detail))}",
                        kind="error_event",
                    )
                finished = finished or event.get("type") in _FINAL_EVENTS
                yield event
            if not finished:
                raise UpstreamError(
                    f"upstream of model {self.alias!r} ended the stream before finishing",
                    kind="broken",
                )
        except (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError) as exc:
            raise UpstreamError(
                f"upstream of model {self.alias!r} broke off the stream: {exc!r}", kind="broken"
            ) from exc
        finally:
            response.release()

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        changes: dict[str, Any] = {"input": request.inputs}
        response = await self._post("embeddings", self._body(request.body, **changes))
        try:
            data = _json_object(await self._read_answer(response), self.alias)
        finally:
            response.release()
        try:
            rows = sorted(data["data"], key=lambda item: item["index"])
            vectors = np.stack([_vector(row["embedding"]) for row in rows])
            prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"upstream of model {self.alias!r} sent a malformed embeddings body"
            ) from exc
        return EmbedResult(vectors, prompt_tokens)


async def sse_lines(pieces: AsyncIterator[bytes], alias: str) -> AsyncGenerator[bytes, None]:
    """Lines of an event stream from its raw pieces, however large (aiohttp's readline caps
    them), splitting only the bytes that arrived since the last split."""
    buffer = bytearray()
    async for data in pieces:
        scanned = len(buffer)  # only the new bytes can hold a newline not yet seen
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", max(start, scanned))) >= 0:
            yield bytes(buffer[start:end]).rstrip(b"\r")
            start = end + 1
        del buffer[:start]
        if len(buffer) > _MAX_SSE_LINE:
            raise UpstreamError(f"upstream of model {alias!r} sent an event over 16 MiB")
    if buffer:
        yield bytes(buffer)


def _endpoint(request: ChatRequest) -> tuple[str, dict[str, Any]]:
    """Where a chat request goes, and what of the body it changes.

    A text completion goes to the upstream's own ``completions`` endpoint and its answer
    comes back in that shape (``text_completion``); its prompt is the request's (one of a
    list, maybe redacted by the PII guard), not the body's.
    """
    if request.prompt is None:
        return "chat/completions", {}
    return "completions", {"prompt": request.prompt}


def _vector(value: Any) -> np.ndarray[Any, Any]:
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


def _json_object(data: bytes, alias: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"upstream of model {alias!r} sent invalid JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamError(f"upstream of model {alias!r} sent JSON that is not an object")
    return value


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
