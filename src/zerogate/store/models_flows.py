"""Tables for the gateway's flow records (schema 0008).

One row per flow a gateway forwarded (at its end, with bytes each way) or
refused (per client, destination, protocol and port, per read of the
gateway's refusal counters). Who and what are resolved when the batch arrives
and stored as text (user, device, policy, application), so a record still
says who reached what after the user, device or policy is gone or renamed.
Rows older than ``flow_retention_days`` are deleted in the background
(:mod:`zerogate.controller.services.flows`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from zerogate.store.models import Base

# 64-bit ids on PostgreSQL (a busy gateway passes 2**31 flows); SQLite's rowid alias is INTEGER.
FlowId = BigInteger().with_variant(Integer(), "sqlite")


class FlowRecordRow(Base):
    """One flow as a gateway saw it; ``denied`` is None for a forwarded flow."""

    __tablename__ = "flow_records"
    __table_args__ = (
        Index("ix_flow_records_user_start", "user", "started_at"),
        Index("ix_flow_records_application_start", "application", "started_at"),
    )
    id: Mapped[int] = mapped_column(FlowId, primary_key=True, autoincrement=True)
    gateway_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime]
    received_at: Mapped[datetime]
    client_address: Mapped[str] = mapped_column(String(45))
    device_id: Mapped[int | None] = mapped_column(default=None)  # no foreign key: records outlive devices
    device_name: Mapped[str | None] = mapped_column(String(64), default=None)
    user: Mapped[str | None] = mapped_column(String(64), default=None)
    protocol: Mapped[str] = mapped_column(String(8))
    destination: Mapped[str] = mapped_column(String(45))
    port: Mapped[int]
    source_port: Mapped[int | None] = mapped_column(default=None)
    policy_id: Mapped[int | None] = mapped_column(default=None)
    policy: Mapped[str | None] = mapped_column(String(64), default=None)
    application: Mapped[str | None] = mapped_column(String(64), default=None)
    denied: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    packets_out: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    packets_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
