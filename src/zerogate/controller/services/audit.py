"""Reading the audit log: records after an id (optionally of one action), and
the check of its hash chain and anchor (see store/audit_verify.py)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.store.audit_verify import LogVerification, verify_audit_log
from zerogate.store.db import Database
from zerogate.store.models import AuditRecord


async def records(
    session: AsyncSession, *, after_id: int, limit: int, action: str | None = None
) -> Sequence[AuditRecord]:
    """Up to ``limit`` records with ids above ``after_id``, oldest first."""
    query = select(AuditRecord).where(AuditRecord.id > after_id)
    if action:
        query = query.where(AuditRecord.action == action)
    return (await session.scalars(query.order_by(AuditRecord.id).limit(limit))).all()


async def verify(db: Database) -> LogVerification:
    """The hash chain and anchor checked from the first record to the head."""
    return await verify_audit_log(db)
