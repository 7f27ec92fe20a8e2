"""Durable storage of one replica: SQLAlchemy 2 async over a SQLite file (or PostgreSQL by URL),
schema under Alembic migrations applied at start."""
