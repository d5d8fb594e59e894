"""The tables of OpenAI-style batch jobs: uploaded files, batches, and one row per request line.

A line is answered exactly once: its result is written in the same transaction that moves it
from ``pending`` to ``done`` or ``failed`` and counts it on its batch, and only a line still
``pending`` can be written. A replica working on a line holds a lease on it (``lease_owner``
until ``lease_until``), renewed while it runs, so other replicas leave it alone; a lease whose
holder died runs out (or is released at once by a restart on the same host) and the line is
run again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from shipway.store.models import Base

__all__ = ["BatchLineRow", "BatchRow", "FileRow"]


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The key that uploaded it (NULL: the anonymous caller of an open server, or a batch's
    # output made for one).
    owner_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column("bytes", BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(index=True)


class BatchRow(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    endpoint: Mapped[str] = mapped_column(String(64))
    # Not a foreign key: the input file may be deleted once the batch has its lines.
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    meta: Mapped[dict[str, Any] | None]
    # The lines' model when they all name one (OpenAI's `model` field), else NULL.
    model: Mapped[str | None] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    errors: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(index=True)
    expires_at: Mapped[datetime]
    in_progress_at: Mapped[datetime | None]
    finalizing_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelling_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]


class BatchLineRow(Base):
    __tablename__ = "batch_lines"
    # The next pending lines of a batch, in order, without reading the finished ones.
    __table_args__ = (Index("ix_batch_lines_pending", "batch_id", "status", "line_no"),)

    batch_id: Mapped[str] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    custom_id: Mapped[str] = mapped_column(String(512))
    model: Mapped[str] = mapped_column(String(200))
    request: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    response: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None]
