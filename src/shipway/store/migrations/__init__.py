"""Alembic migrations, shipped inside the package and run by ``shipway.store.migrate``."""
