"""Checkpoint segments: a shard's applied state as packed blobs instead of a row per key.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kv_segments",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("base", sa.Boolean, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    # kv_items stays: a store written before segments has its items there, and the replica
    # turns them into base segments when it first opens the store (see store.py).


def downgrade() -> None:
    op.drop_table("kv_segments")
