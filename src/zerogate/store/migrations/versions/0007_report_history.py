"""report history: device reports kept for graphs, with bounded retention

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "report_history",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("peers", sa.Integer(), nullable=False),
        sa.Column("client_peers", sa.Integer(), nullable=False),
        sa.Column("handshake_age_max", sa.Float(), nullable=True),
        sa.Column("rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("tx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("connectors_up", sa.Integer(), nullable=True),
        sa.Column("connectors_active", sa.Integer(), nullable=True),
        sa.Column("tunnel_up", sa.Boolean(), nullable=True),
        sa.Column("nft_apply_ms", sa.Float(), nullable=True),
        sa.Column("failovers", sa.BigInteger(), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_report_history_device_at", "report_history", ["device_id", "at"])
    op.create_index("ix_report_history_at", "report_history", ["at"])


def downgrade() -> None:
    op.drop_index("ix_report_history_at", table_name="report_history")
    op.drop_index("ix_report_history_device_at", table_name="report_history")
    op.drop_table("report_history")
