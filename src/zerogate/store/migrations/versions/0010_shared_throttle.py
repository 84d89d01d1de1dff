"""sign-in throttle shared through the database

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Failed attempts (never the secret tried) and known sources; see
    # zerogate.store.models_throttle. Both start empty: the in-memory counts of
    # the controllers running before the upgrade are not carried over.
    op.create_table(
        "throttle_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("account_wide", sa.Boolean(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_throttle_failures_at", "throttle_failures", ["at"])
    op.create_table(
        "throttle_known_sources",
        sa.Column("account", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account", "source"),
    )
    op.create_index("ix_throttle_known_sources_at", "throttle_known_sources", ["at"])


def downgrade() -> None:
    op.drop_index("ix_throttle_known_sources_at", table_name="throttle_known_sources")
    op.drop_table("throttle_known_sources")
    op.drop_index("ix_throttle_failures_at", table_name="throttle_failures")
    op.drop_table("throttle_failures")
