"""connector groups: active-active mode; connectors: draining

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no batch copy on SQLite: other tables reference both). Existing
    # groups keep today's behaviour (standby), existing connectors are not draining and
    # have no active-active slot.
    op.add_column(
        "connector_groups",
        sa.Column("mode", sa.String(length=16), nullable=False, server_default="standby"),
    )
    op.add_column(
        "connectors",
        sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("connectors", sa.Column("slot", sa.Integer(), nullable=True))
    op.create_index("ix_connectors_slot", "connectors", ["slot"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_connectors_slot", table_name="connectors")
    op.drop_column("connectors", "slot")
    op.drop_column("connectors", "draining")
    op.drop_column("connector_groups", "mode")
