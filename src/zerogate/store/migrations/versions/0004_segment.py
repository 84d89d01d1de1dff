"""segment: servers, assets, learned flows, rules, jump hosts; provisioning keys for segment servers

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segment_servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "segment_assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=False),
        sa.Column("ssh_user", sa.String(length=32), nullable=False),
        sa.Column("server_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("directory_dn", sa.String(length=1024), nullable=True),
        sa.Column("left_directory", sa.Boolean(), nullable=False),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.Column("observed_host_key", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=24), nullable=False),
        sa.Column("rules_revision", sa.Integer(), nullable=False),
        sa.Column("learning_started_at", _TIME, nullable=True),
        sa.Column("learning_until", _TIME, nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.Column("reported_at", _TIME, nullable=True),
        sa.Column("enforced_revision", sa.Integer(), nullable=True),
        sa.Column("preflight", sa.JSON(), nullable=False),
        sa.Column("ssh_ports", sa.JSON(), nullable=False),
        sa.Column("flows_refused", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["server_id"], ["segment_servers.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "segment_flows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("peer", sa.String(length=45), nullable=False),
        sa.Column("process", sa.String(length=64), nullable=False),
        sa.Column("first_seen", _TIME, nullable=False),
        sa.Column("last_seen", _TIME, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["segment_assets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("asset_id", "direction", "protocol", "port", "peer", "process"),
    )
    op.create_index("ix_segment_flows_asset_id", "segment_flows", ["asset_id"])
    op.create_table(
        "segment_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("action", sa.String(length=6), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("port_first", sa.Integer(), nullable=False),
        sa.Column("port_last", sa.Integer(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("decided_by", sa.String(length=100), nullable=False),
        sa.Column("decided_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["segment_assets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_segment_rules_asset_id", "segment_rules", ["asset_id"])
    op.create_table(
        "segment_jump_hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
    )
    # A batch (copy and rename) on SQLite, which cannot add a foreign key in place;
    # provisioning_keys has no triggers to lose.
    with op.batch_alter_table("provisioning_keys") as batch:
        batch.add_column(sa.Column("segment_server_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_provisioning_keys_segment_server_id_segment_servers",
            "segment_servers",
            ["segment_server_id"],
            ["id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("provisioning_keys") as batch:
        batch.drop_constraint("fk_provisioning_keys_segment_server_id_segment_servers", type_="foreignkey")
        batch.drop_column("segment_server_id")
    op.drop_table("segment_jump_hosts")
    op.drop_index("ix_segment_rules_asset_id", table_name="segment_rules")
    op.drop_table("segment_rules")
    op.drop_index("ix_segment_flows_asset_id", table_name="segment_flows")
    op.drop_table("segment_flows")
    op.drop_table("segment_assets")
    op.drop_table("segment_servers")
