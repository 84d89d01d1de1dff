"""audit anchor: a MAC per audit record; PostgreSQL refuses TRUNCATE of the log

Revision ID: 0003
Revises: 0002

Records written before this revision keep ``mac`` NULL: the key lives outside
the database, so a migration cannot make their MACs. Verification reports
them as "not anchored" and still checks their hash chain.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch (copy-and-rename) on SQLite: recreating
    # the table would drop its append-only triggers.
    op.add_column("audit_log", sa.Column("mac", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name != "sqlite":
        # Row triggers do not fire on TRUNCATE; SQLite has no TRUNCATE.
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
    op.drop_column("audit_log", "mac")
