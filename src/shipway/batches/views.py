"""Files, batches and output lines as OpenAI's API shows them.

Fields the schema types as strings or integers (``output_file_id``, ``completed_at`` …) are
left out until they have a value, rather than sent as ``null``: that is what the published
schema allows, and the official client reads a missing field as ``None`` all the same.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from shipway.store.batch_files import FileRecord
from shipway.store.batches import AnsweredLine, BatchRecord

__all__ = ["batch_view", "file_view", "output_line", "page_view"]

_TIMES = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def _unix(at: datetime) -> int:
    return int(at.timestamp())


def file_view(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": _unix(record.created_at),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
    }


def batch_view(record: BatchRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "created_at": _unix(record.created_at),
        "request_counts": {
            "total": record.total,
            "completed": record.completed,
            "failed": record.failed,
        },
        "metadata": record.meta,
        "usage": {
            "input_tokens": record.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": record.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": record.input_tokens + record.output_tokens,
        },
    }
    if record.model is not None:
        out["model"] = record.model
    if record.errors is not None:
        out["errors"] = record.errors
    if record.output_file_id is not None:
        out["output_file_id"] = record.output_file_id
    if record.error_file_id is not None:
        out["error_file_id"] = record.error_file_id
    for name in _TIMES:
        at = getattr(record, name)
        if at is not None:
            out[name] = _unix(at)
    return out


def page_view(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A list page; ``first_id`` / ``last_id`` only when the page has objects."""
    out: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if data:
        out["first_id"] = data[0]["id"]
        out["last_id"] = data[-1]["id"]
    return out


def output_line(batch_id: str, line: AnsweredLine) -> dict[str, Any]:
    """One line of an output or error file; its id is the same however often it is written."""
    digest = hashlib.blake2b(f"{batch_id}:{line.line_no}".encode(), digest_size=12).hexdigest()
    return {
        "id": f"batch_req_{digest}",
        "custom_id": line.custom_id,
        "response": line.response,
        "error": line.error,
    }
