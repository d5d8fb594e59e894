"""Per-request costs (attribution, budget seeding) and the per-key prompt cap.

Revision ID: 0003
Revises: 0002
Created: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the types in models.py: a migration must not change when the models do.
_TIME = sa.DateTime(timezone=True)
# SQLite numbers rows itself only for an INTEGER primary key.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_prompt_tokens", sa.Integer(), nullable=True))
    op.create_table(
        "call_costs",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("key_name", sa.String(200), nullable=True),
        sa.Column("team", sa.String(200), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("model_requested", sa.String(128), nullable=False),
        sa.Column("model_served", sa.String(128), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Double(), nullable=False),
        sa.Column("saved", sa.Double(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_call_costs"),
    )
    op.create_index("ix_call_costs_at", "call_costs", ["at"])


def downgrade() -> None:
    op.drop_table("call_costs")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_prompt_tokens")
