"""Alembic's entry point; ``shipway.store.migrate`` hands it an open connection.

There is no ``alembic.ini``: migrations run through ``shipway db upgrade`` or
``Database.start``, which pass the connection (inside a transaction they own) in
``config.attributes``. ``target_metadata`` lets a developer autogenerate the next revision.
"""

from __future__ import annotations

from alembic import context

from shipway.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `shipway db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later revisions rebuild tables in batch mode there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
