"""Alembic migrations of the replica store (applied by :func:`mt_kv.storage.store.migrate`)."""
