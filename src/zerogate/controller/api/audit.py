"""``/v1/audit``: the audit log, and ``/v1/audit/verify``: the check of its chain and anchor."""

from __future__ import annotations

from fastapi import APIRouter, Query

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.services import audit

router = APIRouter(prefix="/v1", tags=["objects"])


@router.get("/audit", response_model=list[s.AuditOut], tags=["audit"])
async def list_audit(
    admin: Admin,
    state: State,
    # Bounded to what an id column holds (PostgreSQL INTEGER): a larger number is
    # a 422, not a driver overflow and a 500.
    after_id: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(100, ge=1, le=1000),
    action: str | None = Query(None, max_length=64),
) -> list[s.AuditOut]:
    async with state.db.read() as session:
        rows = await audit.records(session, after_id=after_id, limit=limit, action=action)
        return [s.AuditOut.model_validate(r, from_attributes=True) for r in rows]


@router.get("/audit/verify", response_model=s.AuditVerifyOut, tags=["audit"])
async def verify_audit(admin: Admin, state: State) -> s.AuditVerifyOut:
    return s.AuditVerifyOut.model_validate((await audit.verify(state.db)).as_json())
