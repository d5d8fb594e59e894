"""Structured logs: one JSON object per line on stderr (or a console renderer for humans)."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog

__all__ = ["AccessLog", "configure_logging"]


def configure_logging(level: str = "info", fmt: str = "json") -> structlog.stdlib.BoundLogger:
    """Configure structlog and the standard library logging alike; return the app's logger."""
    renderer: structlog.typing.Processor
    logger_factory: structlog.typing.WrappedLogger
    if fmt == "json":
        # orjson renders to bytes, written straight to stderr's buffer: the access log is on
        # the hot path of every request.
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
        stdlib_renderer: structlog.typing.Processor = structlog.processors.JSONRenderer()
    else:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=False)
        logger_factory = structlog.PrintLoggerFactory(file=sys.stderr)
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                stdlib_renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would duplicate ours.
    logging.getLogger("uvicorn.access").disabled = True
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("shipway")
    return logger


class AccessLog:
    """The one access-log line per request, off structlog's processor chain when it can be.

    With JSON output at level info or below, the line is the one structlog would write (the
    same keys in the same order, the same UTC timestamp) rendered by orjson and written
    straight to stderr's buffer: about 3 µs instead of 10 on every request's path. Other
    formats and levels go through structlog as any other line.

    Lines are flushed at most ``flush_after_s`` after they are written rather than one write
    call each: under load that is one system call for many requests. A clean stop flushes
    (Python flushes stderr at exit); a killed process loses at most that last fraction of a
    second of access lines.
    """

    def __init__(
        self, level: str, fmt: str, out: BinaryIO | None = None, flush_after_s: float = 0.05
    ) -> None:
        self._direct = fmt == "json" and level in ("debug", "info")
        self._out = out if out is not None else sys.stderr.buffer
        self._log = structlog.get_logger("shipway.access")
        self._flush_after_s = flush_after_s
        self._flush_pending = False

    def write(self, fields: dict[str, Any]) -> None:
        if not self._direct:
            self._log.info("request", **fields)
            return
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._out.write(orjson.dumps(fields) + b"\n")
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, a tool): write it now
                self._out.flush()
                return
            self._flush_pending = True
            loop.call_later(self._flush_after_s, self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._out.flush()
