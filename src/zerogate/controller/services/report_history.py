"""Device report history: one compact sample per device per interval, for graphs.

:func:`sample_of` turns a typed report into the numbers an operator plots;
:func:`record_if_due` keeps one (called by the report ingest, in its
transaction) unless the device already has one younger than the interval; :func:`samples`
reads them back; :func:`prune` deletes what is older than the retention in
batches, each its own short transaction, so a week of backlog never holds the
database's write lock for long. :func:`pruner` runs it in the background.

The running controller holds one :class:`Recorder` (``ControllerState.history``,
made from ``report_history_interval`` and ``report_history_days``); the report
ingest (:func:`zerogate.controller.services.devices.store_report`) hands it the
report with its session. Callers without one (a script, a service test) record
no history.

The throttle: this process remembers each device's newest sample time, so most
reports (11 of 12 at a 5-s report interval and the 60-s default) cost no query
at all; when its memory says a sample may be due it asks the database (the
(device_id, at) index), which is what holds across several controllers sharing
one database. A transaction that fails after a sample was remembered delays
that device's next sample by one interval at most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import retention
from zerogate.controller.reports import DeviceReport
from zerogate.store.db import Database
from zerogate.store.models_history import ReportSample

log = logging.getLogger(__name__)

PRUNE_BATCH = 1000  # rows per delete transaction: ~20-30 ms holding the write lock (README)


@dataclass(frozen=True)
class HistoryPolicy:
    interval: float  # seconds: at most one sample per device this often
    days: float  # retention; 0: keep none


MAX_REMEMBERED = 200_000  # devices whose newest sample time is kept in memory (~30 MB at most)


@dataclass
class Recorder:
    """Keeps at most one sample per device per ``policy.interval`` (see the module)."""

    policy: HistoryPolicy
    newest: dict[int, datetime] = field(default_factory=dict)  # device id -> newest sample time

    async def record_if_due(
        self, session: AsyncSession, device_id: int, report: DeviceReport, at: datetime
    ) -> bool:
        """Add a sample of ``report`` when history is kept and the device's newest sample is
        at least an interval old; whether one was added."""
        if self.policy.days <= 0:
            return False
        every = timedelta(seconds=self.policy.interval)
        known = self.newest.get(device_id)
        if known is not None and at - known < every:
            return False  # this process wrote or saw a sample that recent: no query needed
        newest = await session.scalar(
            select(func.max(ReportSample.at)).where(ReportSample.device_id == device_id)
        )
        if len(self.newest) >= MAX_REMEMBERED:
            self.newest.clear()  # forgetting costs one query per device, never a wrong answer
        if newest is not None and at - _aware(newest) < every:
            self.newest[device_id] = _aware(newest)
            return False
        session.add(sample_of(report, device_id, at))
        self.newest[device_id] = at
        return True


def sample_of(report: DeviceReport, device_id: int, at: datetime) -> ReportSample:
    """The graphable numbers of ``report``; gateway-only and connector-only ones stay None
    for other roles, so a graph shows "not reported" instead of a false zero."""
    now = at.timestamp()
    handshakes = [
        p.latest_handshake for p in report.peers if p.role in ("gateway", "connector") and p.latest_handshake
    ]
    connectors = [p for p in report.peers if p.role == "connector" and p.up is not None]
    d = report.details
    return ReportSample(
        device_id=device_id,
        at=at,
        peers=len(report.peers),
        client_peers=sum(1 for p in report.peers if p.role == "client"),
        handshake_age_max=max(0.0, now - min(handshakes)) if handshakes else None,
        rx_bytes=min(sum(p.rx_bytes for p in report.peers), 2**63 - 1),
        tx_bytes=min(sum(p.tx_bytes for p in report.peers), 2**63 - 1),
        connectors_up=sum(1 for p in connectors if p.up) if connectors else None,
        connectors_active=sum(1 for p in connectors if p.active) if connectors else None,
        tunnel_up=d.tunnel_up,
        nft_apply_ms=d.nft_apply_ms,
        failovers=d.failovers,
        revision=d.revision,
    )


def _aware(value: datetime) -> datetime:
    # max() comes back without the column's type on SQLite: naive, but stored as UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def samples(
    session: AsyncSession, device_id: int, since: datetime, limit: int
) -> tuple[list[ReportSample], bool]:
    """The device's samples after ``since``, oldest first, at most ``limit``; and whether
    more follow (ask again with ``since`` = the last one's ``at``)."""
    rows = list(
        await session.scalars(
            select(ReportSample)
            .where(ReportSample.device_id == device_id, ReportSample.at > since)
            .order_by(ReportSample.at, ReportSample.id)
            .limit(limit + 1)
        )
    )
    return rows[:limit], len(rows) > limit


async def prune(db: Database, before: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete report history older than ``before``, ``batch`` rows per transaction; how many."""
    return await retention.delete_older(db, ReportSample.id, ReportSample.at, before, batch)


def pruner(db: Database, days: float) -> retention.Pruner:
    """The background deletion of report history older than ``days`` (started with the router)."""
    return retention.Pruner(db, "report history", ReportSample.id, ReportSample.at, days, PRUNE_BATCH)
