"""One supervised model worker process, seen from the gateway.

``WorkerProcess.run`` is the supervisor loop: start the process, wait for ``ready``, read its
replies until it exits, fail the request it was serving with ``WorkerCrashed`` (503), wait a
backoff that doubles up to 30 s, start it again. The object is also the *slot* the admission
queue hands out and the ``Backend`` the pipeline calls: ``chat``/``stream``/``embed`` send
one request and relay the replies. If the caller goes away (deadline, disconnect) the worker
is told to cancel; a worker that does not finish within ``cancel_grace_s`` is killed, which
is also how a hung model is noticed; such a kill restarts the worker after the first backoff
step without growing it, since it is not a crash loop. The worker offers itself back to the
queue only once it has sent the terminal reply of its request, so one model context never
serves two requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import sys
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import orjson
import structlog

from shipway.backends.base import (
    Backend,
    ChatRequest,
    EmbedRequest,
    EmbedResult,
)
from shipway.backends.local_answer import AnswerShaper, gather
from shipway.backends.local_chat import plan_local_chat
from shipway.config import WorkerSettings
from shipway.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelUnavailable,
    ShipwayError,
    WorkerCrashed,
)
from shipway.telemetry.metrics import Metrics

__all__ = ["WorkerProcess"]

State = Literal["starting", "idle", "busy", "dead", "stopped"]
_MAX_BACKOFF_S = 30.0
_READ_LIMIT = 256 * 1024 * 1024
_CRASHED = object()
_ERRORS: dict[str, type[ShipwayError]] = {
    "invalid_request": InvalidRequest,
    "context_length_exceeded": ContextLengthExceeded,
}


class WorkerProcess:
    def __init__(
        self,
        *,
        model: str,
        index: int,
        spec: dict[str, Any],
        settings: WorkerSettings,
        on_idle: Callable[[WorkerProcess], None],
        on_gone: Callable[[WorkerProcess], None],
        metrics: Metrics,
        command: Sequence[str] = (sys.executable, "-m", "shipway.engine.worker_main"),
    ) -> None:
        """``command`` runs the worker; the spec JSON is appended as its last argument."""
        self.model = model
        self._command = tuple(command)
        self.index = index
        self._spec = spec
        self._settings = settings
        self._on_idle = on_idle
        self._on_gone = on_gone
        self._metrics = metrics
        # The series exists from the start at 0, so `shipway_workers_up == 0` can fire for a
        # model whose workers never load.
        metrics.workers_up.labels(model)
        self._log = structlog.get_logger("shipway.worker").bind(model=model, worker=index)
        self.state: State = "starting"
        self.pid: int | None = None
        self.info: dict[str, Any] = {}
        self.restarts = 0
        # Consecutive starts that ended before the model loaded: the model cannot be served
        # until one succeeds, so requests fail fast instead of waiting out their deadline.
        self.failed_loads = 0
        # Once a worker has loaded the model, a later restart leaves the model ready (see
        # ModelRunner.state): one worker being replaced is not the model being down.
        self.has_loaded = False
        self.last_error: str | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._current: tuple[int, asyncio.Queue[Any]] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._kill_reason: str | None = None
        self._stopping = False

    # -- slot ---------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        return self

    @property
    def ready(self) -> bool:
        return self.state == "idle"

    def status(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "failed_loads": self.failed_loads,
            "has_loaded": self.has_loaded,
            "last_error": self.last_error,
            **({"model_file": self.info} if self.info else {}),
        }

    # -- supervision ----------------------------------------------------------------------
    async def run(self) -> None:
        backoff = self._settings.restart_backoff_s
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive any one worker
                self.last_error = f"supervisor error: {type(exc).__name__}: {exc}"
                self._log.error("worker supervision failed; restarting", exc_info=exc)
            if self._stopping:
                break
            self.restarts += 1
            self._metrics.worker_restarts.labels(self.model).inc()
            if time.monotonic() - started > 60:
                backoff = self._settings.restart_backoff_s
            if self._kill_reason is not None:
                # Killed on purpose for ignoring a cancel: not a crash loop, so the backoff
                # neither grows nor delays the restart beyond its first step.
                delay = self._settings.restart_backoff_s
            else:
                delay, backoff = backoff, min(max(backoff * 2, 0.1), _MAX_BACKOFF_S)
            self._log.warning("worker restarting", after_s=delay, error=self.last_error)
            await asyncio.sleep(delay)
        self.state = "stopped"

    async def _run_once(self) -> None:
        self.state = "starting"
        self._kill_reason = None
        env = {
            **_without_secrets(os.environ),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(self._spec["threads"]),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
        process = await asyncio.create_subprocess_exec(
            *self._command,
            orjson.dumps(self._spec).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=_READ_LIMIT,
        )
        assert process.stderr is not None
        relay = asyncio.create_task(self._relay_output(process.stderr, process.pid))
        self._process = process
        self.pid = process.pid
        assert process.stdout is not None
        try:
            try:
                async with asyncio.timeout(self._settings.start_timeout_s):
                    hello = _decode(await process.stdout.readline()) or {"type": "eof"}
            except TimeoutError:
                hello = {"type": "failed", "message": "did not load its model in time"}
            if hello.get("type") != "ready":
                self.failed_loads += 1
                self.last_error = hello.get("message", "exited while loading its model")
                self._log.error("worker failed to start", error=self.last_error)
                return
            self.failed_loads = 0
            self.has_loaded = True
            self.info = hello.get("info", {})
            self._log.info("worker ready", pid=process.pid, **self.info)
            self.state = "idle"
            self._metrics.workers_up.labels(self.model).inc()
            self._on_idle(self)
            try:
                await self._read_replies(process.stdout)
            finally:
                self._metrics.workers_up.labels(self.model).dec()
        finally:
            await self._reap(process)
            await relay

    async def _relay_output(self, stderr: asyncio.StreamReader, pid: int) -> None:
        """What the worker's libraries print becomes structured log lines of the gateway."""
        log = self._log.bind(pid=pid)
        while line := await stderr.readline():
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                log.info("worker output", line=text[:2000])

    async def _read_replies(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            message = _decode(line)
            if message is None:
                # Half a line: the worker died mid-write. Treat it as the crash it is.
                self._log.error("worker sent a truncated reply; killing it", pid=self.pid)
                break
            current = self._current
            if current is None or message.get("id") != current[0]:
                continue  # a reply to a request already given up on and replaced: impossible
            current[1].put_nowait(message)
            if message["type"] in ("done", "error"):
                self._finish_request()

    def _finish_request(self) -> None:
        self._current = None
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        if self.state == "busy":
            self.state = "idle"
            self._on_idle(self)

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        was_stopping = self._stopping
        self.state = "stopped" if was_stopping else "dead"
        self._on_gone(self)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await process.wait()
        if self._kill_reason is not None:
            self.last_error = self._kill_reason
        elif self._current is not None and not was_stopping:
            self.last_error = f"worker died mid-request (exit code {code})"
            self._log.error("worker died mid-request", exit_code=code)
        elif self.state == "dead" and self.last_error is None:
            self.last_error = f"worker exited with code {code}"
        if self._current is not None:
            self._current[1].put_nowait(_CRASHED)
            self._current = None
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None

    async def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the worker exits when its stdin closes
        try:
            async with asyncio.timeout(timeout_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    # -- requests -------------------------------------------------------------------------
    async def _exchange(
        self, op: str, request: dict[str, Any]
    ) -> AsyncGenerator[dict[str, Any], None]:
        process = self._process
        if self.state != "idle" or process is None or process.stdin is None:
            raise ModelUnavailable(f"the worker for model {self.model!r} is not available")
        request_id = next(self._ids)
        try:
            line = orjson.dumps({"id": request_id, "op": op, "request": request}) + b"\n"
        except orjson.JSONEncodeError as exc:  # before the worker is marked busy: nothing lost
            raise InvalidRequest(f"the request cannot be encoded: {exc}") from None
        replies: asyncio.Queue[Any] = asyncio.Queue()
        self._current = (request_id, replies)
        self.state = "busy"
        process.stdin.write(line)  # buffered by asyncio; a dead pipe shows up as EOF on stdout
        finished = False
        try:
            while True:
                message = await replies.get()
                if message is _CRASHED:
                    finished = True
                    raise WorkerCrashed(
                        f"the worker serving model {self.model!r} crashed during this request "
                        "and is being restarted; retry the request",
                        retry_after=1,
                    )
                kind = message["type"]
                if kind == "error":
                    finished = True
                    error_class = _ERRORS.get(message["kind"], ShipwayError)
                    raise error_class(message["message"], param=message.get("param"))
                if kind == "done":
                    finished = True
                yield message
                if finished:
                    return
        finally:
            if not finished:
                self._cancel(request_id)

    def _cancel(self, request_id: int) -> None:
        process = self._process
        if self._current is None or self._current[0] != request_id or process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.write(orjson.dumps({"id": request_id, "op": "cancel"}) + b"\n")
        loop = asyncio.get_running_loop()
        self._kill_timer = loop.call_later(
            self._settings.cancel_grace_s, self._kill_hung, request_id
        )

    def _kill_hung(self, request_id: int) -> None:
        if self._current is not None and self._current[0] == request_id and self._process:
            self._kill_reason = f"did not stop within {self._settings.cancel_grace_s}s of a cancel"
            self._log.error("worker hung; killing it", pid=self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[dict[str, Any], None]:
        plan = plan_local_chat(request)
        shaper = AnswerShaper(plan)
        for chunk in shaper.opening():
            yield chunk
        done: dict[str, Any] | None = None
        async with contextlib.aclosing(self._exchange("chat", plan.wire(request))) as replies:
            async for message in replies:
                if message["type"] == "delta":
                    for chunk in shaper.delta(message):
                        yield chunk
                else:
                    done = message
                    for chunk in shaper.done(message):
                        yield chunk
        if done is not None:
            yield shaper.usage_chunk(done)

    async def chat(self, request: ChatRequest) -> dict[str, Any]:
        plan = plan_local_chat(request)
        shaper = AnswerShaper(plan)
        chunks = shaper.opening()
        done: dict[str, Any] = {}
        async with contextlib.aclosing(self._exchange("chat", plan.wire(request))) as replies:
            async for message in replies:
                if message["type"] == "delta":
                    chunks += shaper.delta(message)
                else:
                    done = message
                    chunks += shaper.done(message)
        return gather(chunks, done, request.logprobs)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        wire = {"inputs": request.inputs, "dimensions": request.dimensions}
        async with contextlib.aclosing(self._exchange("embed", wire)) as replies:
            async for message in replies:
                vectors = np.frombuffer(base64.b64decode(message["vectors"]), dtype=np.float32)
                counts = message["token_counts"]
                return EmbedResult(vectors.reshape(message["shape"]), sum(counts), counts)
        raise ModelUnavailable(f"the worker for model {self.model!r} returned nothing")


def _decode(line: bytes) -> dict[str, Any] | None:
    """One protocol line, or None for an empty, truncated or garbled one."""
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


# A worker parses model files and prompts in native code: if that is ever exploited, it must
# not find the server's secrets (key pepper, audit keys, upstream API keys, database URLs).
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def _without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith("SHIPWAY_") and not any(w in name.upper() for w in _SECRET_WORDS)
    }
