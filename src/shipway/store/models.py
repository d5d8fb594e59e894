"""The tables, as SQLAlchemy models; the migrations in ``migrations/versions`` create them.

Types are chosen to mean the same on SQLite and PostgreSQL: times are stored in UTC and always
read back timezone-aware (SQLite keeps no zone), lists and records are ``JSON`` (``json`` on
PostgreSQL, not ``jsonb``, so the audit record's text is kept exactly as written), hashes and
HMACs are hex text. A test compares these models with the migrated schema on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    String,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["ApiKeyRow", "AuditRow", "Base", "CallCostRow", "TeamRow", "UTCDateTime", "utcnow"]

# Named constraints, so a later migration can drop or alter them on both databases.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("store times must be timezone-aware (use datetime.now(UTC))")
        value = value.astimezone(UTC)
        # SQLite would write the offset into some strings and not others; store naive UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        list[str]: JSON(),
        dict[str, Any]: JSON(),
    }


class TeamRow(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # NULL: no restriction of the team's own (each key's list still applies).
    models: Mapped[list[str] | None]
    rpm: Mapped[int | None]
    tpm: Mapped[int | None]
    created_at: Mapped[datetime]


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int | None] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    # A keyed hash of the whole key (hex); the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    # The first characters of the key (`sw-…`), shown in listings so a person can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(32))
    models: Mapped[list[str] | None]
    rpm: Mapped[int | None]
    tpm: Mapped[int | None]
    # Largest `max_tokens` this key may ask for (NULL: the model's limit only).
    max_tokens: Mapped[int | None]
    # Largest prompt this key may send, in tokens (NULL: the model's limit only).
    max_prompt_tokens: Mapped[int | None]
    # Guard policies that override the model's: {"injection": "block", "pii": "redact"}.
    guards: Mapped[dict[str, Any] | None]
    admin: Mapped[bool] = mapped_column(default=False, server_default=false())
    # The admin key that created this one (NULL: the CLI), for audit and scope checks.
    created_by: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class AuditRow(Base):
    __tablename__ = "audit_log"

    # Chosen by the writer (head + 1), not by the database: the HMAC covers it, and two
    # replicas appending at once collide on the primary key instead of forking the chain.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    data: Mapped[dict[str, Any]]
    prev_hmac: Mapped[str] = mapped_column(String(128))
    hmac: Mapped[str] = mapped_column(String(128))


class CallCostRow(Base):
    """One finished request's cost, for attribution reports and for seeding budgets.

    Names (key, team) are copied, not only ids: a report must still say who spent what after
    a key is revoked or a team renamed, and grouping by a column needs no join.
    """

    __tablename__ = "call_costs"

    # SQLite numbers rows itself only for an INTEGER primary key.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    request_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(index=True)
    key_id: Mapped[int | None]
    key_name: Mapped[str | None] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column(String(256))
    tags: Mapped[list[str] | None]
    model_requested: Mapped[str] = mapped_column(String(128))
    model_served: Mapped[str] = mapped_column(String(128))
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cost: Mapped[float] = mapped_column(Double())
    # What a cache hit would have cost had it been served (0 for a miss).
    saved: Mapped[float] = mapped_column(Double())
    cached: Mapped[bool]
    batch_id: Mapped[str | None] = mapped_column(String(64))


# The batch jobs' tables live in their own module; imported here so that `Base.metadata`
# (Alembic's env, the schema comparison test) always holds them.
from shipway.store import batch_models as _batch_models  # noqa: E402, F401
