"""The audit log (newest first, filter by action, page back by id, verify the chain), the
flow records (the API's ``GET /v1/flows`` with its filters) and segment assets.

"Verify chain" is the API's ``GET /v1/audit/verify`` (store/audit_verify.py): the hash
chain from the first record to the head, and the anchor outside the database. It changes
nothing, so it is a plain GET form (no CSRF token needed). Segment assets are listed
read-only (``GET /v1/segment/assets``).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from zerogate.controller import schemas as s
from zerogate.controller.portal import web
from zerogate.store.models import AuditRecord

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)
AUDIT = f"{web.PATH}/audit"
_ACTION = re.compile(r"[a-z][a-z0-9-]{0,63}")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")  # a user or application name as a filter
FLOWS_PAGE = 200


async def newest(session: web.Session, action: str, before_id: int, limit: int) -> list[s.AuditOut]:
    """Up to ``limit`` records below ``before_id`` (0: from the head), newest first: what an
    operator looks for first (the API pages oldest first, after an id)."""
    query = select(AuditRecord)
    if before_id:
        query = query.where(AuditRecord.id < before_id)
    if action:
        query = query.where(AuditRecord.action == action)
    async with session.state.db.read() as db:
        rows = (await db.scalars(query.order_by(AuditRecord.id.desc()).limit(limit))).all()
        return [s.AuditOut.model_validate(r, from_attributes=True) for r in rows]


async def _audit(
    session: web.Session, action: str, before_id: int, limit: int, verified: s.AuditVerifyOut | None = None
) -> Response:
    if action and not _ACTION.fullmatch(action):
        raise web.Refused(422, "the action filter is not valid (lower-case letters, digits and dashes)")
    records = await newest(session, action, before_id, limit)
    return session.render(
        "audit.html", records=records, action=action, limit=limit, verified=verified,
        older=records[-1].id if len(records) == limit else None,
    )  # fmt: skip


@router.get(AUDIT)
async def audit_page(
    request: Request,
    action: str = Query("", max_length=64),
    before_id: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    return await _audit(await web.signed_in(request), action, before_id, limit)


@router.get(f"{AUDIT}/verify")
async def verify(request: Request) -> Response:
    session = await web.signed_in(request)
    verified: s.AuditVerifyOut = await session.api("GET", "/v1/audit/verify")
    return await _audit(session, "", 0, 100, verified)


@router.get(f"{web.PATH}/flows")
async def flows_page(
    request: Request,
    user: str = Query("", max_length=64),
    app: str = Query("", max_length=64),
    shown: str = Query("all", pattern="^(all|forwarded|refused)$"),
    after_id: int = Query(0, ge=0, le=2**62),
) -> Response:
    """Flow records, oldest first from ``after_id``: who reached what, which policy decided."""
    session = await web.signed_in(request)
    if (user and not _NAME.fullmatch(user)) or (app and not _NAME.fullmatch(app)):
        raise web.Refused(422, "the user or application filter is not a valid name")
    denied = {"all": None, "forwarded": False, "refused": True}[shown]
    rows = await session.api(
        "GET", "/v1/flows", user=user or None, app=app or None, since=None, denied=denied,
        after_id=after_id, limit=FLOWS_PAGE,
    )  # fmt: skip
    newer = rows[-1]["id"] if len(rows) == FLOWS_PAGE else None
    return session.render("flows.html", rows=rows, user=user, app=app, shown=shown, newer=newer)


@router.get(f"{web.PATH}/segment")
async def segment_assets(request: Request) -> Response:
    session = await web.signed_in(request)
    assets = await session.api("GET", "/v1/segment/assets")
    servers = await session.api("GET", "/v1/segment-servers")
    return session.render("segment.html", assets=assets, servers=servers)
