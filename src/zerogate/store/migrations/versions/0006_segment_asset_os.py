"""segment: an asset's operating system (linux over SSH, windows over WinRM)

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch (copy and rename) on SQLite: recreating segment_assets
    # would cascade into the tables that reference it. Existing assets are Linux hosts.
    op.add_column(
        "segment_assets",
        sa.Column("os", sa.String(length=8), nullable=False, server_default="linux"),
    )


def downgrade() -> None:
    op.drop_column("segment_assets", "os")
