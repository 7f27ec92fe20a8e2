"""The initial replica store: items, log and per-shard state.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kv_items",
        sa.Column("keyspace", sa.String(255), primary_key=True),
        sa.Column("partition", sa.LargeBinary, primary_key=True),
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_kv_items_shard", "kv_items", ["shard"])
    op.create_table(
        "kv_log",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "kv_shards",
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("primary", sa.String(64), nullable=False),
        sa.Column("applied_seq", sa.BigInteger, nullable=False),
        sa.Column("applied_epoch", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kv_shards")
    op.drop_table("kv_log")
    op.drop_index("ix_kv_items_shard", "kv_items")
    op.drop_table("kv_items")
