"""Tables for the device report history (schema 0007).

A device's report (:mod:`zerogate.controller.reports`) is replaced on every
``POST /v1/report``; graphs need its numbers over time. One narrow row per
sample keeps what an operator plots (peers, handshake age, bytes, connectors
up and active, nftables apply time, failovers), never the peers themselves:
a gateway with 10,000 clients makes the same ~100-byte row as a connector.
The controller writes at most one row per device per
``report_history_interval`` and deletes rows older than
``report_history_days`` (:mod:`zerogate.controller.services.report_history`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from zerogate.store.models import Base

# 64-bit ids on PostgreSQL (10,000 devices at one row a minute pass 2**31 in five
# months); SQLite's rowid alias must be declared INTEGER to autoincrement.
HistoryId = BigInteger().with_variant(Integer(), "sqlite")


class ReportSample(Base):
    """One sample of a device's report; NULL where the device's role has no such number."""

    __tablename__ = "report_history"
    __table_args__ = (Index("ix_report_history_device_at", "device_id", "at"),)
    id: Mapped[int] = mapped_column(HistoryId, primary_key=True, autoincrement=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(index=True)  # when the controller received the report
    peers: Mapped[int] = mapped_column(default=0)  # WireGuard peers of any role
    client_peers: Mapped[int] = mapped_column(default=0)
    # the oldest last handshake among gateway/connector peers (clients come and go), seconds
    handshake_age_max: Mapped[float | None] = mapped_column(default=None)
    rx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # totals over all peers
    tx_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    connectors_up: Mapped[int | None] = mapped_column(default=None)  # a gateway's probe view
    connectors_active: Mapped[int | None] = mapped_column(default=None)
    tunnel_up: Mapped[bool | None] = mapped_column(default=None)  # a connector's tunnel
    nft_apply_ms: Mapped[float | None] = mapped_column(default=None)
    failovers: Mapped[int | None] = mapped_column(BigInteger, default=None)
    revision: Mapped[int | None] = mapped_column(BigInteger, default=None)
