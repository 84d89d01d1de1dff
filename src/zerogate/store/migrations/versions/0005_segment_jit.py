"""segment: just-in-time MFA ports and openings

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segment_jit_ports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("users", sa.JSON(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("max_duration", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["segment_assets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("asset_id", "protocol", "port"),
    )
    op.create_index("ix_segment_jit_ports_asset_id", "segment_jit_ports", ["asset_id"])
    op.create_table(
        "segment_jit_openings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=45), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Integer(), nullable=False),
        sa.Column("requested_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.Column("expired_audited", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["segment_assets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_segment_jit_openings_asset_id", "segment_jit_openings", ["asset_id"])
    op.create_index("ix_segment_jit_openings_expires_at", "segment_jit_openings", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_segment_jit_openings_expires_at", table_name="segment_jit_openings")
    op.drop_index("ix_segment_jit_openings_asset_id", table_name="segment_jit_openings")
    op.drop_table("segment_jit_openings")
    op.drop_index("ix_segment_jit_ports_asset_id", table_name="segment_jit_ports")
    op.drop_table("segment_jit_ports")
