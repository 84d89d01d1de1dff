"""flow records: every flow a gateway forwarded or refused

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "flow_records",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Integer(), nullable=False),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("ended_at", _TIME, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("client_address", sa.String(length=45), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("device_name", sa.String(length=64), nullable=True),
        sa.Column("user", sa.String(length=64), nullable=True),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("destination", sa.String(length=45), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("source_port", sa.Integer(), nullable=True),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("policy", sa.String(length=64), nullable=True),
        sa.Column("application", sa.String(length=64), nullable=True),
        sa.Column("denied", sa.String(length=32), nullable=True),
        sa.Column("packets_out", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("packets_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["gateway_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_flow_records_gateway_id", "flow_records", ["gateway_id"])
    op.create_index("ix_flow_records_started_at", "flow_records", ["started_at"])
    op.create_index("ix_flow_records_denied", "flow_records", ["denied"])
    op.create_index("ix_flow_records_user_start", "flow_records", ["user", "started_at"])
    op.create_index("ix_flow_records_application_start", "flow_records", ["application", "started_at"])


def downgrade() -> None:
    for name in (
        "ix_flow_records_application_start",
        "ix_flow_records_user_start",
        "ix_flow_records_denied",
        "ix_flow_records_started_at",
        "ix_flow_records_gateway_id",
    ):
        op.drop_index(name, table_name="flow_records")
    op.drop_table("flow_records")
