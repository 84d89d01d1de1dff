"""``/v1/segment/...`` just-in-time (JIT) openings: MFA-protected ports
(admin), the requests segment servers forward for their users, the openings
and their revocation; and the sweep that audits expiries.

A request is checked like a sign-in -- the same throttle (keyed by the user
name and the requester's address, not the segment server's), the same
password check and refusal audit, the same TOTP check with replay protection
-- and only then authorised. Every outcome is audited: approved
(``segment-jit-approve``), refused (``segment-jit-refuse`` with the reason),
throttled (the sign-in refusal record), revoked (``segment-jit-revoke``) and
expired (``segment-jit-expire``, once per opening, by :func:`sweep_loop`).
Creating or revoking an opening bumps the config revision, so the segment
server's snapshot watch wakes at once; an expiry needs none (the host's
kernel timeout already closed it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Path, Query
from sqlalchemy import func, select

from zerogate.controller import background
from zerogate.controller.auth import Admin, SegmentCaller, State, check_password
from zerogate.controller.schemas import segment_jit as sj
from zerogate.controller.services import segment, segment_jit
from zerogate.controller.state import ControllerState, Principal, Unauthorized
from zerogate.pki.totp import verify_totp
from zerogate.store.db import utcnow
from zerogate.store.models import Account, SegmentAssetRow, SegmentJitOpening

log = logging.getLogger(__name__)

# How often expired openings are looked for (their audit record may lag this much).
SWEEP_SECONDS = 2.0
REFUSE = "segment-jit-refuse"
OPENING = "segment-jit-opening"
WRONG_CREDENTIALS = "wrong username, password or code"


async def sweep_once(state: ControllerState) -> int:
    """Audit the openings that expired since the last sweep (a cheap read first,
    so an idle controller does not take the write lock every few seconds)."""
    async with state.db.read() as session:
        due = await session.scalar(
            select(func.count())
            .select_from(SegmentJitOpening)
            .where(
                SegmentJitOpening.expired_audited.is_(False),
                SegmentJitOpening.revoked_at.is_(None),
                SegmentJitOpening.expires_at <= utcnow(),
            )
        )
    if not due:
        return 0
    async with state.db.write() as tx:
        return await segment_jit.audit_expired(tx)


async def sweep_loop(state: ControllerState, interval: float = SWEEP_SECONDS) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(state)
        except Exception as exc:  # keep sweeping through a database blip
            log.warning("auditing expired JIT openings failed: %s", exc, extra={"component": "segment-jit"})


@asynccontextmanager
async def sweeper(app: FastAPI) -> AsyncIterator[None]:
    """Runs the expiry sweep while the app runs (merged into the app's lifespan)."""
    state: ControllerState = app.state.zg
    task = background.start(sweep_loop(state), "segment jit expiry sweep")
    try:
        yield
    finally:
        await background.stop(task)


router = APIRouter(prefix="/v1/segment", tags=["segment"], lifespan=sweeper)


# --------------------------------------------------------------------------- ports (admin)


@router.post("/assets/{name}/jit-ports", response_model=sj.JitPortOut, status_code=201)
async def add_port(name: str, body: sj.JitPortCreate, admin: Admin, state: State) -> sj.JitPortOut:
    """Mark a port of the asset MFA-protected: the users and groups named may
    open it for themselves (from the given subnets, if any) for at most
    ``max_duration`` seconds."""
    async with state.mutation(admin, "segment-jit-port-add", "segment-asset") as m:
        asset = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = asset.id, {"asset": asset.name, **body.model_dump(mode="json")}
        row = await segment_jit.add_port(m.tx.session, asset, body, state.settings.segment_jit_durations)
        m.config_change = False  # nothing changes on the host until an opening is made
        return segment_jit.port_out(asset, row)


@router.get("/assets/{name}/jit-ports", response_model=list[sj.JitPortOut])
async def list_ports(name: str, admin: Admin, state: State) -> list[sj.JitPortOut]:
    async with state.db.read() as session:
        asset = await segment.find_asset(session, name)
        return [segment_jit.port_out(asset, r) for r in await segment_jit.list_ports(session, asset)]


@router.delete("/assets/{name}/jit-ports/{protocol}/{port}", status_code=204)
async def remove_port(
    name: str, protocol: sj.Protocol, admin: Admin, state: State, port: int = Path(ge=1, le=65535)
) -> None:
    """Stop protecting the port with MFA; its active openings are revoked."""
    async with state.mutation(admin, "segment-jit-port-remove", "segment-asset") as m:
        asset = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = asset.id, {"asset": asset.name, "protocol": protocol, "port": port}
        revoked = await segment_jit.remove_port(m.tx.session, asset, protocol, port)
        m.details["revoked"] = revoked
        m.config_change = bool(revoked)


# --------------------------------------------------------------------------- openings (admin)


@router.get("/jit-openings", response_model=list[sj.JitOpeningOut])
async def list_openings(
    admin: Admin,
    state: State,
    asset: str | None = Query(default=None, max_length=253),
    active_only: bool = True,
) -> list[sj.JitOpeningOut]:
    """Openings, newest first (at most 1000): the active ones, or all with
    ``active_only=false``; of one asset with ``asset`` (a filter: none for an unknown name)."""
    async with state.db.read() as session:
        rows = await segment_jit.list_openings(session, asset, active_only)
        return await segment_jit.openings_out(session, rows)


@router.post("/jit-openings/{opening_id}/revoke", response_model=sj.JitOpeningOut)
async def revoke_opening(
    admin: Admin, state: State, opening_id: int = Path(ge=1, le=2**31 - 1)
) -> sj.JitOpeningOut:
    """Close an opening now: the segment server removes it from the host at once."""
    async with state.mutation(admin, "segment-jit-revoke", OPENING, opening_id) as m:
        row = await segment_jit.find_opening(m.tx.session, opening_id)
        asset = await m.tx.session.get(SegmentAssetRow, row.asset_id)
        m.details = segment_jit.details(row, asset.name if asset else "")
        segment_jit.revoke(row)
        return (await segment_jit.openings_out(m.tx.session, [row]))[0]


# --------------------------------------------------------------------------- requests (segment server)


def _request_details(body: sj.JitRequest, server: str) -> dict[str, Any]:
    """Audit details of a request: what was asked, never the password or code."""
    return {
        "user": body.username,
        "source": body.source,
        "asset": body.asset,
        "protocol": body.protocol,
        "port": body.port,
        "duration": body.duration,
        "server": server,
    }


async def _check_totp(
    state: ControllerState, account: Account, body: sj.JitRequest, info: dict[str, Any]
) -> None:
    """The second factor, as sign-in checks it: a confirmed TOTP secret and a
    code not used before (the step is kept). Failures count for the throttle."""
    who = Principal(kind=account.kind, id=account.id, name=account.username, source=body.source)
    reason = ""
    async with state.db.write() as tx:
        acc = await tx.session.get(Account, account.id)
        if acc is None or acc.status != "active" or not acc.totp_confirmed or acc.totp_secret is None:
            reason = "account not active or TOTP not confirmed"
        else:
            step = verify_totp(acc.totp_secret, body.totp, time.time(), last_used_step=acc.totp_last_step)
            if step is None:
                reason = "wrong or reused TOTP code"
            else:
                acc.totp_last_step = step
    if reason:
        state.throttle.login_failed(body.username, body.source)
        await state.refused(who, REFUSE, "account", account.id, reason, info)
        raise Unauthorized(WRONG_CREDENTIALS)
    state.throttle.login_succeeded(body.username, body.source)


@router.post("/jit-requests", response_model=sj.JitRequestOut, status_code=201)
async def request_opening(body: sj.JitRequest, who: SegmentCaller, state: State) -> sj.JitRequestOut:
    """A segment server forwards a user's request for an opening (the user's
    password and TOTP code, and the address it saw the user at). 401 for
    wrong credentials (never which part), 403 with the reason when not
    allowed, 429 with Retry-After while the user or address is throttled."""
    async with state.db.read() as session:
        server = await segment.server_of_device(session, who.id)
    info = _request_details(body, server.name)
    # Throttle, password and its refusal audit: exactly the sign-in path.
    account = await check_password(state, body.username, body.password, body.source, REFUSE)
    await _check_totp(state, account, body, info)
    user = Principal(kind=account.kind, id=account.id, name=account.username, source=body.source)
    try:
        async with state.db.write() as tx:
            acc = await tx.session.get(Account, account.id)
            assert acc is not None
            grant = await segment_jit.authorize(
                tx.session, server, acc, body, state.settings.segment_jit_durations
            )
            row = await segment_jit.open_opening(tx.session, grant, body)
            tx.bump()
            tx.audit(
                actor=user.actor,
                source=body.source,
                action="segment-jit-approve",
                object_type=OPENING,
                object_id=row.id,
                details=info | {"expires_at": row.expires_at.isoformat()},
            )
    except segment_jit.JitRefused as exc:
        await state.refused(user, REFUSE, OPENING, "", exc.message, info, aggregate=False)
        raise
    return sj.JitRequestOut(
        opening_id=row.id,
        asset=grant.asset.name,
        source=row.source,
        protocol=row.protocol,
        port=row.port,
        expires_at=row.expires_at,
    )
