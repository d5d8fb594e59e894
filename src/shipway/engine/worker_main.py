"""Entry point of a model worker process: ``python -m shipway.engine.worker_main SPEC_JSON``.

The worker loads one model and serves one request at a time. It speaks newline-delimited
JSON: requests arrive on stdin, replies leave on a private copy of stdout (fd 1 itself is
pointed at stderr, so a library that prints cannot corrupt the protocol). A reader thread
takes ``cancel`` messages while the main thread works, and the runners check for them
between prompt batches, embedding batches and tokens, then answer at once so the worker is
free again. When stdin closes (the gateway is gone) the worker exits.

Replies: ``ready`` once the model is loaded; per request, any number of ``delta`` messages
and then exactly one terminal ``done`` or ``error``.
"""

from __future__ import annotations

import base64
import os
import queue
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from shipway.backends.local_errors import LocalModelError
from shipway.backends.model_files import embedded_chat_model_path, embedded_embedding_model_path

__all__ = ["main"]

# The terminal reply to an embedding the gateway cancelled; nobody reads it, it only tells
# the gateway that the worker is free again. (A cancelled chat is ``done`` with
# finish_reason "cancelled".)
_CANCELLED = {"kind": "cancelled", "message": "cancelled by the gateway", "param": None}


class _Channel:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message) + b"\n"
        with self._lock:
            self._out.write(data)
            self._out.flush()


def _load(spec: dict[str, Any]) -> Any:
    kind = spec["kind"]
    if kind == "llamacpp":
        from shipway.backends.llamacpp import LlamaCppRunner

        path = Path(spec["path"]) if spec.get("path") else embedded_chat_model_path()
        return LlamaCppRunner(
            path, n_ctx=spec["n_ctx"], n_batch=spec["n_batch"], threads=spec["threads"]
        )
    if kind == "sentence_transformers":
        from shipway.backends.sentence import SentenceRunner

        path = Path(spec["path"]) if spec.get("path") else embedded_embedding_model_path()
        return SentenceRunner(path, threads=spec["threads"], batch_size=spec["batch_size"])
    raise ValueError(f"unknown worker kind {kind!r}")


def _serve(
    runner: Any, channel: _Channel, jobs: queue.Queue[dict[str, Any]], cancelled: set[int]
) -> None:
    while True:
        job = jobs.get()
        request_id: int = job["id"]
        try:
            if job["op"] == "chat":
                result = runner.chat(
                    job["request"],
                    lambda piece, rid=request_id: channel.send(
                        {"id": rid, "type": "delta", **piece}
                    ),
                    lambda rid=request_id: rid in cancelled,
                )
                channel.send({"id": request_id, "type": "done", **result})
            elif job["op"] == "embed":
                embedded = runner.embed(job["request"], lambda rid=request_id: rid in cancelled)
                if embedded is None:
                    channel.send({"id": request_id, "type": "error", **_CANCELLED})
                    continue
                vectors, token_counts = embedded
                channel.send(
                    {
                        "id": request_id,
                        "type": "done",
                        "shape": list(vectors.shape),
                        "vectors": base64.b64encode(vectors.tobytes()).decode("ascii"),
                        "token_counts": token_counts,
                    }
                )
            else:
                raise LocalModelError("internal", f"unknown op {job['op']!r}")
        except LocalModelError as exc:
            channel.send({"id": request_id, "type": "error", **exc.to_wire()})
        except Exception as exc:  # noqa: BLE001 - reported to the gateway, which stays up
            traceback.print_exc()  # to stderr, which the gateway relays into its log
            message = f"internal error in the model worker ({type(exc).__name__}); see the log"
            channel.send(
                {
                    "id": request_id,
                    "type": "error",
                    "kind": "internal",
                    "message": message,
                    "param": None,
                }
            )
        finally:
            cancelled.discard(request_id)


def _read_requests(jobs: queue.Queue[dict[str, Any]], cancelled: set[int]) -> None:
    for line in sys.stdin.buffer:
        message = orjson.loads(line)
        if message["op"] == "cancel":
            cancelled.add(message["id"])
        else:
            jobs.put(message)
    # The gateway closed our stdin: it is gone or wants us gone.
    os._exit(0)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the gateway decides when a worker
    # stops (it drains first, then closes our stdin), so the worker ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = orjson.loads(sys.argv[1])
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    channel = _Channel(protocol_out)
    try:
        runner = _load(spec)
    except Exception as exc:  # noqa: BLE001 - the supervisor logs this and retries with backoff
        channel.send({"type": "failed", "message": f"{type(exc).__name__}: {exc}"})
        sys.exit(3)
    channel.send({"type": "ready", "pid": os.getpid(), "info": runner.info()})
    jobs: queue.Queue[dict[str, Any]] = queue.Queue()
    cancelled: set[int] = set()
    threading.Thread(target=_read_requests, args=(jobs, cancelled), daemon=True).start()
    _serve(runner, channel, jobs, cancelled)


if __name__ == "__main__":
    main()
