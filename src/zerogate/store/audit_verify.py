"""Verify the audit log of a database against this controller's anchor.

Shared by the API (``GET /v1/audit/verify``) and the local
``zerogate controller audit-verify``, so both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from zerogate.model.audit import AuditEntry, ChainProblem, verify_anchored, verify_chain
from zerogate.store.db import Database, DatabaseError
from zerogate.store.models import AuditRecord, DeploymentState


@dataclass(frozen=True)
class LogVerification:
    records: int
    head_id: int
    problems: list[ChainProblem]
    anchored_from: int | None = None
    not_anchored: int = 0
    checkpoints: int = 0
    newest_checkpoint: int = 0
    anchor_file: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """What the API and ``controller audit-verify --json`` answer."""
        return {
            "ok": self.ok,
            "records": self.records,
            "head_id": self.head_id,
            "problems": [{"record_id": p.record_id, "problem": p.problem} for p in self.problems],
            "anchored_from": self.anchored_from,
            "not_anchored": self.not_anchored,
            "checkpoints": self.checkpoints,
            "newest_checkpoint": self.newest_checkpoint,
            "anchor_file": self.anchor_file,
            "warnings": self.warnings,
        }


def audit_entry(r: AuditRecord) -> AuditEntry:
    return AuditEntry(
        id=r.id,
        at=r.at,
        actor=r.actor,
        source=r.source,
        action=r.action,
        object_type=r.object_type,
        object_id=r.object_id,
        outcome=r.outcome,
        details=r.details,
        prev_hash=r.prev_hash,
        hash=r.hash,
        mac=r.mac,
    )


async def verify_audit_log(db: Database) -> LogVerification:
    async with db.read() as session:
        state = await session.get(DeploymentState, 1)
        if state is None:
            raise DatabaseError("the database is not initialised: run 'zerogate controller init'")
        result = await session.stream_scalars(select(AuditRecord).order_by(AuditRecord.id))
        entries = [audit_entry(r) async for r in result]
    if db.anchor is None:
        return LogVerification(
            records=len(entries),
            head_id=state.audit_head_id,
            problems=verify_chain(entries, state.audit_head_id, state.audit_head_hash),
            not_anchored=len(entries),
            warnings=["no audit key: MACs and checkpoints were not checked"],
        )
    checkpoints, warnings = db.anchor.read_checkpoints()
    report = verify_anchored(entries, state.audit_head_id, state.audit_head_hash, db.anchor.key, checkpoints)
    return LogVerification(
        records=len(entries),
        head_id=state.audit_head_id,
        problems=report.problems,
        anchored_from=report.anchored_from,
        not_anchored=report.not_anchored,
        checkpoints=len(checkpoints),
        newest_checkpoint=report.newest_checkpoint,
        anchor_file=str(db.anchor.path),
        warnings=warnings,
    )
