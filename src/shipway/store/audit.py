"""The audit log's hash chain: appending records and verifying that none was touched.

Each record's HMAC covers its own fields and the HMAC of the record before it, so a record
cannot be edited, deleted or moved without breaking the chain at that point, and nobody
without the key can forge a replacement. The first record links to ``GENESIS``.

    message(record) = JSON [seq, at, kind, principal, request_id, prev_hmac]
                      + "\n" + the data's JSON text
    hmac(record)    = HMAC-SHA256(key, message) in hex

The data is serialised once, on writing (sorted keys, no whitespace), and its text is what
the HMAC covers and what the database keeps byte for byte (``json``, not ``jsonb``, on
PostgreSQL); verifying reads that text back and never re-serialises it, so no JSON library's
formatting of numbers can break an old chain. The header is rebuilt from the columns as
compact JSON (strings, integers, null: an output every JSON library writes alike), times in
ISO 8601 UTC with microseconds (what both databases keep); it holds no raw newline, so the
first newline ends it.

Sequence numbers are chosen here (head + 1), inside the caller's transaction. On PostgreSQL a
transaction-scoped advisory lock makes replicas take turns; on SQLite the single writer lock
does, and a writer that read a head someone else has since extended collides on the primary
key and gets ``Conflict``: rolling back and appending again is always safe.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from typing import cast as typed

import orjson
from sqlalchemy import Table, Text, cast, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shipway.errors import Conflict
from shipway.store.models import AuditRow

__all__ = [
    "GENESIS",
    "AuditEntry",
    "ChainHead",
    "VerifyReport",
    "append",
    "data_json",
    "head",
    "record_hmac",
    "verify",
]

GENESIS = "0" * 64
# Shared by every replica: appenders on one PostgreSQL database take turns on it.
_CHAIN_LOCK = 0x4155_4454  # "AUDT"
_PAGE = 1000
_TABLE = typed(Table, AuditRow.__table__)
# Column widths (models.py): longer values are cut so a record is never refused for them.
_KIND_MAX, _PRINCIPAL_MAX, _REQUEST_ID_MAX = 64, 200, 64


def data_json(data: Mapping[str, Any]) -> str:
    """``data`` as compact JSON with sorted keys; ``ValueError`` if it cannot be.

    NaN and infinities become null (JSON has neither); times and dataclasses are written as
    orjson writes them; keys that are not strings, integers beyond 64 bits and text that is
    not valid Unicode are refused.
    """
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:  # orjson.JSONEncodeError
        raise ValueError(f"not JSON data: {exc}") from exc


# Written through the driver, not SQLAlchemy's insert: its per-row parameter processing cost
# ~12 µs a record on the event loop, a tenth of a whole request's budget (docs/performance.md).
# Constant text: the values are bound by the driver (S608 sees an f-string, not input).
_COLUMNS = "seq, at, kind, principal, request_id, data, prev_hmac, hmac"
_INSERT_SQL = {
    "qmark": f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
    "numeric_dollar": (
        f"INSERT INTO audit_log ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"  # noqa: S608
    ),
}


def _driver_time(at: datetime, dialect: str) -> Any:
    """``at`` as the driver stores it: SQLite keeps the text SQLAlchemy's DateTime writes
    (naive UTC, so ``UTCDateTime`` reads it back alike); asyncpg takes the datetime."""
    if dialect == "sqlite":
        return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    return at


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A record to append; build it with ``of``, which serialises its data."""

    at: datetime
    kind: str
    principal: str | None
    request_id: str | None
    data_json: str

    @classmethod
    def of(
        cls,
        at: datetime,
        kind: str,
        principal: str | None,
        request_id: str | None,
        data: Mapping[str, Any],
    ) -> AuditEntry:
        """Raises ``ValueError`` when ``data`` is not plain JSON data."""
        if at.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        return cls(
            # What the database gives back: microseconds, UTC.
            at=at.astimezone(UTC),
            kind=kind[:_KIND_MAX],
            principal=None if principal is None else principal[:_PRINCIPAL_MAX],
            request_id=None if request_id is None else request_id[:_REQUEST_ID_MAX],
            data_json=data_json(data),
        )


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last record of the chain; exported, it is an anchor a later cut cannot hide from."""

    seq: int
    hmac: str
    at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hmac": self.hmac,
            "at": None if self.at is None else _iso(self.at),
        }

    @classmethod
    def from_json(cls, value: Any) -> ChainHead:
        """Raises ``ValueError`` naming what is wrong with an anchor document."""
        if not isinstance(value, dict):
            raise ValueError("an anchor is a JSON object {seq, hmac, at}")
        seq, mac, at = value.get("seq"), value.get("hmac"), value.get("at")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("anchor: seq must be a whole number >= 0")
        if not isinstance(mac, str) or not mac:
            raise ValueError("anchor: hmac must be a hex string")
        if at is not None and not isinstance(at, str):
            raise ValueError("anchor: at must be an ISO 8601 time or null")
        return cls(seq, mac, None if at is None else datetime.fromisoformat(at))


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    """Records checked and found intact, from seq 1."""
    head: ChainHead | None
    """The last intact record (None: none is)."""
    broken_seq: int | None = None
    tampering: str | None = None
    """``edited``, ``deleted``, ``reordered``, ``truncated`` (or ``inserted``: a record
    before seq 1); None: the chain is intact."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.tampering is None

    def summary(self) -> str:
        if self.ok:
            if self.head is None:
                return "0 records, chain empty"
            return (
                f"{self.records} records, chain intact up to seq {self.head.seq} "
                f"(hmac {self.head.hmac})"
            )
        return f"seq {self.broken_seq}: {self.tampering}: {self.detail}"


def record_hmac(
    key: bytes,
    *,
    seq: int,
    at: datetime,
    kind: str,
    principal: str | None,
    request_id: str | None,
    data_json: str,
    prev_hmac: str,
) -> str:
    header = orjson.dumps([seq, _iso(at), kind, principal, request_id, prev_hmac])
    return hmac.digest(key, header + b"\n" + data_json.encode(), "sha256").hex()


async def head(session: AsyncSession) -> ChainHead | None:
    query = select(_TABLE.c.seq, _TABLE.c.hmac, _TABLE.c.at).order_by(_TABLE.c.seq.desc())
    row = (await session.execute(query.limit(1))).first()
    return None if row is None else ChainHead(row.seq, row.hmac, row.at)


async def append(
    session: AsyncSession, entries: Sequence[AuditEntry], hmac_key: bytes
) -> ChainHead | None:
    """Chain ``entries`` after the head, in order; returns the new head.

    Raises ``Conflict`` when another writer appended since the head was read (SQLite): the
    transaction is then unusable; roll it back and append again.
    """
    if entries:
        conn = await session.connection()
        if conn.dialect.name == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _CHAIN_LOCK})
    last = await head(session)
    if not entries:
        return last
    seq, prev = (0, GENESIS) if last is None else (last.seq, last.hmac)
    conn = await session.connection()
    dialect = conn.dialect.name
    rows: list[tuple[Any, ...]] = []
    for entry in entries:
        seq += 1
        mac = record_hmac(
            hmac_key,
            seq=seq,
            at=entry.at,
            kind=entry.kind,
            principal=entry.principal,
            request_id=entry.request_id,
            data_json=entry.data_json,
            prev_hmac=prev,
        )
        at = _driver_time(entry.at, dialect)
        row = (seq, at, entry.kind, entry.principal, entry.request_id, entry.data_json, prev, mac)
        rows.append(row)
        prev = mac
    try:
        await conn.exec_driver_sql(_INSERT_SQL[conn.dialect.paramstyle], rows)
    except IntegrityError as exc:
        raise Conflict(
            f"another writer appended to the audit log at seq {rows[0][0]}; append again"
        ) from exc
    return ChainHead(seq, prev, entries[-1].at)


async def verify(
    session: AsyncSession, hmac_key: bytes, anchor: ChainHead | None = None
) -> VerifyReport:
    """Walk the chain in seq order, a page at a time; report the first broken record.

    Without ``anchor`` a cut tail looks like a shorter, intact log; with an anchor exported
    earlier, a log that ends before it, or differs from it at its seq, is ``truncated``.
    """
    checked, expected, prev = 0, 1, GENESIS
    last: ChainHead | None = None
    anchor_seen = anchor is None or anchor.seq == 0
    columns = (*(c for c in _TABLE.c if c.name != "data"), cast(_TABLE.c.data, Text).label("data"))
    ordered = select(*columns).order_by(_TABLE.c.seq)
    size = _PAGE
    while True:
        page = ordered if checked == 0 else ordered.where(_TABLE.c.seq >= expected)
        try:
            rows = (await session.execute(page.limit(size))).all()
        except ValueError:
            # A value the column cannot read back (text written over a time): find its row.
            if size > 1:
                size = 1
                continue
            return await _unreadable(session, checked, last, expected)
        for row in rows:
            if row.seq < expected:
                return _report(
                    checked, last, row.seq, "inserted", "a record before the start of the chain"
                )
            if row.seq != expected:
                return _report(
                    checked,
                    last,
                    expected,
                    "deleted",
                    f"records {_span(expected, row.seq - 1)} are missing; next is seq {row.seq}",
                )
            if not _authentic(row, hmac_key):
                return await _broken(session, checked, last, row, prev)
            if row.prev_hmac != prev:
                return _report(
                    checked,
                    last,
                    row.seq,
                    "reordered",
                    "the record is intact but does not follow the one before it",
                )
            if anchor is not None and row.seq == anchor.seq:
                if row.hmac != anchor.hmac:
                    return _report(
                        checked,
                        last,
                        row.seq,
                        "truncated",
                        "not the record the anchor saw at this seq: the log was cut before "
                        "it and written again",
                    )
                anchor_seen = True
            checked, expected, prev = checked + 1, row.seq + 1, row.hmac
            last = ChainHead(row.seq, row.hmac, row.at)
        if len(rows) < size:
            break
    if not anchor_seen and anchor is not None:
        return _report(
            checked,
            last,
            expected,
            "truncated",
            f"the log ends at seq {expected - 1} but the anchor saw seq {anchor.seq}: records "
            f"{_span(expected, anchor.seq)} were cut from the end",
        )
    return VerifyReport(checked, last)


def _authentic(row: Any, hmac_key: bytes) -> bool:
    expected = record_hmac(
        hmac_key,
        seq=row.seq,
        at=row.at,
        kind=row.kind,
        principal=row.principal,
        request_id=row.request_id,
        data_json=row.data,
        prev_hmac=row.prev_hmac,
    )
    return hmac.compare_digest(expected.encode(), row.hmac.encode())


async def _broken(
    session: AsyncSession, checked: int, last: ChainHead | None, row: Any, prev: str
) -> VerifyReport:
    # A record moved to another seq fails its HMAC (the seq is covered) and names, as its
    # predecessor, a record that sits somewhere else. An edit leaves the link alone.
    if row.prev_hmac != prev and row.prev_hmac != GENESIS:
        query = select(_TABLE.c.seq).where(_TABLE.c.hmac == row.prev_hmac).limit(1)
        elsewhere = await session.scalar(query)
        if elsewhere is not None:
            return _report(
                checked,
                last,
                row.seq,
                "reordered",
                f"this record was written after the one now at seq {elsewhere}",
            )
    detail = "its contents do not match its HMAC (edited or forged)"
    if row.seq == 1:
        detail += ", or the HMAC key is not the one that wrote the log"
    return _report(checked, last, row.seq, "edited", detail)


async def _unreadable(
    session: AsyncSession, checked: int, last: ChainHead | None, expected: int
) -> VerifyReport:
    query = select(_TABLE.c.seq).order_by(_TABLE.c.seq).limit(1)
    if checked:
        query = query.where(_TABLE.c.seq >= expected)
    seq = await session.scalar(query)
    detail = "a value in it cannot be read back (written over by hand)"
    return _report(checked, last, expected if seq is None else seq, "edited", detail)


def _report(
    checked: int, last: ChainHead | None, seq: int, tampering: str, detail: str
) -> VerifyReport:
    return VerifyReport(checked, last, broken_seq=seq, tampering=tampering, detail=detail)


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
