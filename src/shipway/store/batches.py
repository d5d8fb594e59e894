"""Batches and their request lines: create, look up, list, claim, record, move between states.

Functions take the ``AsyncSession`` of a ``Database.transaction()`` and return frozen records.

Exactly once: ``record_line`` counts the answer on the batch and writes it on the line in one
transaction, and only while the line is still ``pending`` and its batch still running; a line
answered already (by a replica that ran it too) is not counted twice. Status changes are
conditional (``move`` names the statuses it moves from), so two replicas finishing the same
batch cannot both write its output.

Leases: ``claim_lines`` gives a replica the next unleased pending lines of a batch, in line
order, until ``until``; ``renew_leases`` extends them while they run; a crashed replica's
lines are claimed again when its lease runs out or is released (``release_leases``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import CursorResult, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shipway.errors import Conflict
from shipway.store.batch_files import Viewer, visible
from shipway.store.batch_models import BatchLineRow, BatchRow

__all__ = [
    "ACTIVE",
    "AnsweredLine",
    "BatchRecord",
    "BatchStatus",
    "ClaimedLine",
    "LineOutcome",
    "NewLine",
    "active_batches",
    "answered_lines",
    "attach_files",
    "claim_lines",
    "create_batch",
    "fail_pending",
    "get_batch",
    "lease_owners",
    "list_batches",
    "move",
    "new_batch_id",
    "record_line",
    "release_leases",
    "renew_leases",
    "request_cancel",
]

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
# The statuses a runner still has work in.
ACTIVE: tuple[BatchStatus, ...] = ("in_progress", "cancelling", "finalizing")
_RUNNING = ("in_progress", "cancelling")


@dataclass(frozen=True, slots=True)
class NewLine:
    line_no: int
    custom_id: str
    model: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    owner_key_id: int | None
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    meta: dict[str, Any] | None
    model: str | None
    total: int
    completed: int
    failed: int
    input_tokens: int
    output_tokens: int
    output_file_id: str | None
    error_file_id: str | None
    errors: dict[str, Any] | None
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedLine:
    batch_id: str
    line_no: int
    custom_id: str
    model: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """A line's answer: ``response`` (``status_code``, ``request_id``, ``body``) when the
    endpoint answered, ``error`` (``code``, ``message``) when it could not be run at all."""

    ok: bool
    response: dict[str, Any] | None
    error: dict[str, Any] | None = None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class AnsweredLine:
    line_no: int
    custom_id: str
    status: str
    response: dict[str, Any] | None
    error: dict[str, Any] | None


_FIELDS = [column.key for column in BatchRow.__table__.columns]


def _record(row: BatchRow) -> BatchRecord:
    return BatchRecord(**{name: getattr(row, name) for name in _FIELDS})


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


async def create_batch(
    session: AsyncSession,
    *,
    owner_key_id: int | None,
    endpoint: str,
    input_file_id: str,
    completion_window: str,
    meta: dict[str, Any] | None,
    lines: Sequence[NewLine],
    at: datetime,
    expires_at: datetime,
) -> BatchRecord:
    """A batch whose lines are checked already: it starts ``in_progress``."""
    models = {line.model for line in lines}
    row = BatchRow(
        id=new_batch_id(),
        owner_key_id=owner_key_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=completion_window,
        status="in_progress",
        meta=meta,
        model=models.pop() if len(models) == 1 else None,
        total=len(lines),
        completed=0,
        failed=0,
        input_tokens=0,
        output_tokens=0,
        created_at=at,
        expires_at=expires_at,
        in_progress_at=at,
    )
    session.add(row)
    await session.flush()
    await session.execute(
        insert(BatchLineRow),
        [
            {
                "batch_id": row.id,
                "line_no": line.line_no,
                "custom_id": line.custom_id,
                "model": line.model,
                "request": line.request,
                "status": "pending",
            }
            for line in lines
        ],
    )
    return _record(row)


async def get_batch(
    session: AsyncSession, batch_id: str, viewer: Viewer | None = None
) -> BatchRecord | None:
    """The batch, if ``viewer`` may see it (None: no check, for the runner)."""
    query = select(BatchRow).where(BatchRow.id == batch_id)
    if viewer is not None:
        query = query.where(visible(BatchRow.owner_key_id, viewer))
    row = await session.scalar(query)
    return None if row is None else _record(row)


async def list_batches(
    session: AsyncSession, viewer: Viewer, *, limit: int, after: str | None = None
) -> tuple[list[BatchRecord], bool]:
    """Newest first, up to ``limit`` after the batch ``after``; and whether more follow."""
    query = select(BatchRow).where(visible(BatchRow.owner_key_id, viewer))
    if after is not None:
        where = (BatchRow.id == after, visible(BatchRow.owner_key_id, viewer))
        cursor = (
            await session.execute(select(BatchRow.created_at, BatchRow.id).where(*where))
        ).one_or_none()
        if cursor is not None:
            at, cursor_id = cursor
            query = query.where(
                or_(
                    BatchRow.created_at < at,
                    and_(BatchRow.created_at == at, BatchRow.id < cursor_id),
                )
            )
    query = query.order_by(BatchRow.created_at.desc(), BatchRow.id.desc()).limit(limit + 1)
    rows = list(await session.scalars(query))
    return [_record(row) for row in rows[:limit]], len(rows) > limit


async def request_cancel(
    session: AsyncSession, batch_id: str, viewer: Viewer, at: datetime
) -> BatchRecord | None:
    """Move a running batch to ``cancelling`` (None: no such batch for ``viewer``)."""
    batch = await get_batch(session, batch_id, viewer)
    if batch is None:
        return None
    if batch.status == "cancelling":
        return batch
    if not await move(session, batch_id, ("validating", "in_progress"), "cancelling", at):
        current = await get_batch(session, batch_id)
        status = batch.status if current is None else current.status
        raise Conflict(f"Cannot cancel a batch with status '{status}'.")
    return await get_batch(session, batch_id)


async def move(
    session: AsyncSession,
    batch_id: str,
    from_statuses: Sequence[BatchStatus],
    to_status: BatchStatus,
    at: datetime,
    **values: Any,
) -> bool:
    """Set the status (and its ``<status>_at`` time) if it is one of ``from_statuses``."""
    if to_status != "validating":
        values[f"{to_status}_at"] = at
    result = await session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id, BatchRow.status.in_(from_statuses))
        .values(status=to_status, **values)
    )
    return _rowcount(result) == 1


async def active_batches(session: AsyncSession) -> list[BatchRecord]:
    """Batches a runner has work in, oldest first."""
    query = select(BatchRow).where(BatchRow.status.in_(ACTIVE)).order_by(BatchRow.created_at)
    return [_record(row) for row in await session.scalars(query)]


async def claim_lines(
    session: AsyncSession,
    batch_id: str,
    *,
    owner: str,
    now: datetime,
    until: datetime,
    limit: int,
) -> list[ClaimedLine]:
    """Lease the next ``limit`` pending lines nobody holds to ``owner`` until ``until``."""
    free = or_(BatchLineRow.lease_until.is_(None), BatchLineRow.lease_until < now)
    pending = and_(BatchLineRow.batch_id == batch_id, BatchLineRow.status == "pending", free)
    numbers = list(
        await session.scalars(
            select(BatchLineRow.line_no)
            .where(pending)
            .order_by(BatchLineRow.line_no)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not numbers:
        return []
    await session.execute(
        update(BatchLineRow)
        .where(pending, BatchLineRow.line_no.in_(numbers))
        .values(lease_owner=owner, lease_until=until)
    )
    # Read back what this owner holds: on SQLite another process may have taken a line
    # between the select and the update.
    rows = await session.execute(
        select(
            BatchLineRow.line_no, BatchLineRow.custom_id, BatchLineRow.model, BatchLineRow.request
        )
        .where(
            BatchLineRow.batch_id == batch_id,
            BatchLineRow.line_no.in_(numbers),
            BatchLineRow.lease_owner == owner,
            BatchLineRow.status == "pending",
        )
        .order_by(BatchLineRow.line_no)
    )
    return [ClaimedLine(batch_id, *row) for row in rows]


async def renew_leases(session: AsyncSession, owner: str, until: datetime) -> None:
    await session.execute(
        update(BatchLineRow)
        .where(BatchLineRow.lease_owner == owner, BatchLineRow.status == "pending")
        .values(lease_until=until)
    )


async def lease_owners(session: AsyncSession) -> list[str]:
    """Owners holding leases on pending lines."""
    query = (
        select(BatchLineRow.lease_owner)
        .where(BatchLineRow.status == "pending", BatchLineRow.lease_owner.is_not(None))
        .distinct()
    )
    return [owner for owner in await session.scalars(query) if owner is not None]


async def release_leases(session: AsyncSession, owners: Sequence[str]) -> None:
    if owners:
        await session.execute(
            update(BatchLineRow)
            .where(BatchLineRow.lease_owner.in_(owners), BatchLineRow.status == "pending")
            .values(lease_owner=None, lease_until=None)
        )


async def record_line(
    session: AsyncSession, batch_id: str, line_no: int, outcome: LineOutcome
) -> bool:
    """Write a line's answer once; False (nothing written) when it was answered already or
    its batch has stopped running."""
    counter = BatchRow.completed if outcome.ok else BatchRow.failed
    counted = {
        counter.key: counter + 1,
        "input_tokens": BatchRow.input_tokens + outcome.input_tokens,
        "output_tokens": BatchRow.output_tokens + outcome.output_tokens,
    }
    # The batch row first: it locks the batch against a concurrent status change.
    batch = await session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id, BatchRow.status.in_(_RUNNING))
        .values(**counted)
    )
    if _rowcount(batch) != 1:
        return False
    line = await session.execute(
        update(BatchLineRow)
        .where(
            BatchLineRow.batch_id == batch_id,
            BatchLineRow.line_no == line_no,
            BatchLineRow.status == "pending",
        )
        .values(
            status="done" if outcome.ok else "failed",
            response=outcome.response,
            error=outcome.error,
            lease_owner=None,
            lease_until=None,
        )
    )
    if _rowcount(line) == 1:
        return True
    await session.execute(  # answered already: take the count back
        update(BatchRow)
        .where(BatchRow.id == batch_id)
        .values(
            **{
                counter.key: counter - 1,
                "input_tokens": BatchRow.input_tokens - outcome.input_tokens,
                "output_tokens": BatchRow.output_tokens - outcome.output_tokens,
            }
        )
    )
    return False


async def fail_pending(session: AsyncSession, batch_id: str, error: dict[str, Any]) -> int:
    """Every line still pending fails with ``error`` (an expired batch); how many."""
    result = await session.execute(
        update(BatchLineRow)
        .where(BatchLineRow.batch_id == batch_id, BatchLineRow.status == "pending")
        .values(status="failed", error=error, lease_owner=None, lease_until=None)
    )
    count = _rowcount(result)
    if count:
        await session.execute(
            update(BatchRow).where(BatchRow.id == batch_id).values(failed=BatchRow.failed + count)
        )
    return count


async def answered_lines(session: AsyncSession, batch_id: str) -> list[AnsweredLine]:
    """The batch's answered lines, in line order."""
    rows = await session.execute(
        select(
            BatchLineRow.line_no,
            BatchLineRow.custom_id,
            BatchLineRow.status,
            BatchLineRow.response,
            BatchLineRow.error,
        )
        .where(BatchLineRow.batch_id == batch_id, BatchLineRow.status != "pending")
        .order_by(BatchLineRow.line_no)
    )
    return [AnsweredLine(*row) for row in rows]


async def attach_files(
    session: AsyncSession, batch_id: str, output_file_id: str | None, error_file_id: str | None
) -> None:
    await session.execute(
        update(BatchRow)
        .where(BatchRow.id == batch_id)
        .values(output_file_id=output_file_id, error_file_id=error_file_id)
    )


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
