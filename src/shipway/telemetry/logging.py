"""Structured logs: one JSON object per line on stderr (or a console renderer for humans)."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

__all__ = ["configure_logging"]


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
