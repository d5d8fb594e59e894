"""A batch's end: its output and error files written, in line order, with its last status.

The status change and the files are one transaction: a batch is never ``completed`` without
its files, and a runner killed while finishing leaves it ``finalizing`` (or ``cancelling``),
to be finished again after the restart. The move is conditional on the status it starts
from, so two replicas finishing the same batch write its files once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson

from shipway.batches.views import output_line
from shipway.store import Database
from shipway.store import batches as store
from shipway.store.batch_files import create_file

__all__ = ["EXPIRED_ERROR", "finish"]

EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


async def finish(
    database: Database,
    batch_id: str,
    from_statuses: Sequence[store.BatchStatus],
    to_status: store.BatchStatus,
    at: datetime,
) -> bool:
    """Move the batch to ``to_status`` and write its files; False if it was not in one of
    ``from_statuses`` (another runner finished it)."""
    async with database.transaction() as session:
        if not await store.move(session, batch_id, from_statuses, to_status, at):
            return False
        if to_status == "expired":
            await store.fail_pending(session, batch_id, EXPIRED_ERROR)
        batch = await store.get_batch(session, batch_id)
        assert batch is not None
        output, errors = bytearray(), bytearray()
        for line in await store.answered_lines(session, batch_id):
            target = output if line.status == "done" else errors
            target += orjson.dumps(output_line(batch_id, line))
            target += b"\n"
        file_ids: list[str | None] = []
        for kind, content in (("output", output), ("error", errors)):
            if not content:
                file_ids.append(None)
                continue
            made = await create_file(
                session,
                owner_key_id=batch.owner_key_id,
                purpose="batch_output",
                filename=f"{batch_id}_{kind}.jsonl",
                content=bytes(content),
                at=at,
            )
            file_ids.append(made.id)
        await store.attach_files(session, batch_id, file_ids[0], file_ids[1])
    return True
