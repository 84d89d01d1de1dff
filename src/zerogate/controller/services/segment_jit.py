"""Just-in-time (JIT) openings on protected segment assets.

An admin marks ports of an asset as MFA-protected (:class:`SegmentJitPort`):
who may ask (users, groups, optionally only from some subnets) and the longest
opening. A user asks the asset's segment server, which forwards the request
with the user's password and TOTP code; once the caller has checked those
(the sign-in code path, in the API module), :func:`authorize` decides and
:func:`open_opening` records a :class:`SegmentJitOpening`. The segment server
receives the asset's active openings in its snapshot (:func:`active_openings`)
and adds each to the host as a set element with a kernel timeout, so an
opening closes by itself even when nobody is left to remove it.

Refusals raise :class:`JitRefused` (403) with a short fixed reason that never
quotes the request. Other errors are the :mod:`zerogate.controller.state` ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import ip_address, ip_network

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.schemas import segment_jit as sj
from zerogate.controller.services.lookup import all_by_name
from zerogate.controller.state import Conflict, Forbidden, NotFound, Unprocessable
from zerogate.model.segment import AssetMode
from zerogate.model.snapshot import JitOpening
from zerogate.store.db import WriteTx, utcnow
from zerogate.store.models import (
    Account,
    Group,
    SegmentAssetRow,
    SegmentJitOpening,
    SegmentJitPort,
    SegmentServer,
)

# The snapshot carries at most this many openings per asset (SegmentAsset.jit_openings).
MAX_ACTIVE_PER_ASSET = 4096
EXPIRE_ACTION = "segment-jit-expire"


class JitRefused(Forbidden):
    """The request is authentic but not allowed; the message is the audited reason."""


def durations_text(durations: Iterable[int]) -> str:
    return ", ".join(str(d) for d in durations)


# --------------------------------------------------------------------------- ports


def port_out(asset: SegmentAssetRow, row: SegmentJitPort) -> sj.JitPortOut:
    return sj.JitPortOut(
        id=row.id,
        asset=asset.name,
        protocol=row.protocol,
        port=row.port,
        users=list(row.users),
        groups=list(row.groups),
        sources=list(row.sources),
        max_duration=row.max_duration,
    )


async def list_ports(session: AsyncSession, asset: SegmentAssetRow) -> Sequence[SegmentJitPort]:
    return (
        await session.scalars(
            select(SegmentJitPort)
            .where(SegmentJitPort.asset_id == asset.id)
            .order_by(SegmentJitPort.protocol, SegmentJitPort.port)
        )
    ).all()


async def find_port(
    session: AsyncSession, asset: SegmentAssetRow, protocol: str, port: int
) -> SegmentJitPort:
    row = await session.scalar(
        select(SegmentJitPort).where(
            SegmentJitPort.asset_id == asset.id,
            SegmentJitPort.protocol == protocol,
            SegmentJitPort.port == port,
        )
    )
    if row is None:
        raise NotFound("that port of the asset is not MFA-protected")
    return row


async def add_port(
    session: AsyncSession, asset: SegmentAssetRow, body: sj.JitPortCreate, durations: Sequence[int]
) -> SegmentJitPort:
    """Mark a port MFA-protected. Unprocessable without anyone allowed or for a
    maximum that is not an allowed duration; NotFound for an unknown user or
    group; Conflict when the port is already marked."""
    if asset.os != "linux":  # the segment server opens JIT elements with nftables over SSH
        raise Unprocessable("just-in-time openings are for Linux assets only (not yet on Windows)")
    if not body.users and not body.groups:
        raise Unprocessable("name at least one user or group who may ask for this port")
    if body.max_duration not in durations:
        raise Unprocessable(f"max_duration must be one of the allowed durations: {durations_text(durations)}")
    await all_by_name(session, Account, body.users, "user")
    await all_by_name(session, Group, body.groups, "group")
    if await session.scalar(
        select(func.count())
        .select_from(SegmentJitPort)
        .where(
            SegmentJitPort.asset_id == asset.id,
            SegmentJitPort.protocol == body.protocol,
            SegmentJitPort.port == body.port,
        )
    ):
        raise Conflict("that port of the asset is already MFA-protected")
    row = SegmentJitPort(
        asset_id=asset.id,
        protocol=body.protocol,
        port=body.port,
        users=list(dict.fromkeys(body.users)),
        groups=list(dict.fromkeys(body.groups)),
        sources=list(dict.fromkeys(body.sources)),
        max_duration=body.max_duration,
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row


async def remove_port(session: AsyncSession, asset: SegmentAssetRow, protocol: str, port: int) -> list[int]:
    """Unmark the port and revoke its active openings; returns their ids."""
    row = await find_port(session, asset, protocol, port)
    now = utcnow()
    revoked = []
    for opening in await session.scalars(
        select(SegmentJitOpening).where(
            SegmentJitOpening.asset_id == asset.id,
            SegmentJitOpening.protocol == protocol,
            SegmentJitOpening.port == port,
            SegmentJitOpening.revoked_at.is_(None),
            SegmentJitOpening.expires_at > now,
        )
    ):
        opening.revoked_at = now
        revoked.append(opening.id)
    await session.delete(row)
    return revoked


# --------------------------------------------------------------------------- openings


def state_of(row: SegmentJitOpening, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    return "active" if row.expires_at > now else "expired"


async def openings_out(session: AsyncSession, rows: Sequence[SegmentJitOpening]) -> list[sj.JitOpeningOut]:
    names = dict((await session.execute(select(SegmentAssetRow.id, SegmentAssetRow.name))).tuples().all())
    now = utcnow()
    return [
        sj.JitOpeningOut(
            id=r.id,
            asset=names.get(r.asset_id, ""),
            user=r.username,
            source=r.source,
            protocol=r.protocol,
            port=r.port,
            requested_at=r.requested_at,
            expires_at=r.expires_at,
            revoked_at=r.revoked_at,
            state=state_of(r, now),
        )
        for r in rows
    ]


async def list_openings(
    session: AsyncSession, asset: str | None, active_only: bool, limit: int = 1000
) -> Sequence[SegmentJitOpening]:
    """Newest first; of the asset named ``asset`` only, if given; only the active ones when ``active_only``."""
    query = select(SegmentJitOpening).order_by(SegmentJitOpening.id.desc()).limit(limit)
    if asset is not None:
        query = query.join(SegmentAssetRow, SegmentAssetRow.id == SegmentJitOpening.asset_id).where(
            SegmentAssetRow.name == asset
        )
    if active_only:
        query = query.where(SegmentJitOpening.revoked_at.is_(None), SegmentJitOpening.expires_at > utcnow())
    return (await session.scalars(query)).all()


async def find_opening(session: AsyncSession, opening_id: int) -> SegmentJitOpening:
    row = await session.get(SegmentJitOpening, opening_id)
    if row is None:
        raise NotFound("no JIT opening with that id")
    return row


def revoke(row: SegmentJitOpening) -> None:
    """Close the opening now; Conflict when it is already revoked or expired."""
    now = utcnow()
    if row.revoked_at is not None:
        raise Conflict("that opening is already revoked")
    if row.expires_at <= now:
        raise Conflict("that opening has already expired")
    row.revoked_at = now


def details(row: SegmentJitOpening, asset: str) -> dict[str, object]:
    """What every JIT audit record says about an opening (never a secret)."""
    return {
        "user": row.username,
        "source": row.source,
        "asset": asset,
        "protocol": row.protocol,
        "port": row.port,
        "duration": row.duration,
    }


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Grant:
    asset: SegmentAssetRow
    port: SegmentJitPort


async def authorize(
    session: AsyncSession,
    server: SegmentServer,
    account: Account,
    body: sj.JitRequest,
    durations: Sequence[int],
) -> Grant:
    """Whether ``account`` may open what it asked for through ``server``.

    The account's password and TOTP code were checked already. Raises
    :class:`JitRefused` with the first reason that applies.
    """
    asset = await session.scalar(select(SegmentAssetRow).where(SegmentAssetRow.name == body.asset))
    # An unknown asset and another server's look the same: the caller learns nothing.
    if asset is None or asset.server_id != server.id:
        raise JitRefused("the asset is not managed by this segment server")
    if asset.mode != AssetMode.PROTECTED.value:
        raise JitRefused("the asset is not in mode protected")
    port = await session.scalar(
        select(SegmentJitPort).where(
            SegmentJitPort.asset_id == asset.id,
            SegmentJitPort.protocol == body.protocol,
            SegmentJitPort.port == body.port,
        )
    )
    if port is None:
        raise JitRefused("that port of the asset is not MFA-protected")
    if account.username not in port.users and not {g.name for g in account.groups} & set(port.groups):
        raise JitRefused("the user may not open this port")
    source = ip_address(body.source)
    if port.sources and not any(source in ip_network(p) for p in port.sources):
        raise JitRefused("the source address is outside the subnets allowed for this port")
    if body.duration not in durations or body.duration > port.max_duration:
        raise JitRefused("that duration is not allowed for this port")
    active = await session.scalar(
        select(func.count())
        .select_from(SegmentJitOpening)
        .where(
            SegmentJitOpening.asset_id == asset.id,
            SegmentJitOpening.revoked_at.is_(None),
            SegmentJitOpening.expires_at > utcnow(),
        )
    )
    if (active or 0) >= MAX_ACTIVE_PER_ASSET:
        raise JitRefused("the asset has too many open openings; ask an admin to revoke some")
    return Grant(asset=asset, port=port)


async def open_opening(session: AsyncSession, grant: Grant, body: sj.JitRequest) -> SegmentJitOpening:
    now = utcnow()
    row = SegmentJitOpening(
        asset_id=grant.asset.id,
        username=body.username,
        source=body.source,
        protocol=body.protocol,
        port=body.port,
        duration=body.duration,
        requested_at=now,
        expires_at=now + timedelta(seconds=body.duration),
    )
    session.add(row)
    await session.flush()
    return row


# --------------------------------------------------------------------------- snapshot and expiry


async def active_openings(
    session: AsyncSession, asset_ids: Sequence[int]
) -> dict[int, tuple[JitOpening, ...]]:
    """Per asset its active openings, one per (source, protocol, port): the one
    that lasts longest, so the host holds one element per pair."""
    found: dict[int, dict[tuple[str, str, int], SegmentJitOpening]] = {a: {} for a in asset_ids}
    if asset_ids:
        for row in await session.scalars(
            select(SegmentJitOpening)
            .where(
                SegmentJitOpening.asset_id.in_(list(asset_ids)),
                SegmentJitOpening.revoked_at.is_(None),
                SegmentJitOpening.expires_at > utcnow(),
            )
            .order_by(SegmentJitOpening.id)
        ):
            key = (row.source, row.protocol, row.port)
            kept = found[row.asset_id].get(key)
            if kept is None or row.expires_at > kept.expires_at:
                found[row.asset_id][key] = row
    return {
        asset_id: tuple(
            JitOpening(
                opening_id=r.id,
                source=ip_address(r.source),
                protocol=r.protocol,
                port=r.port,
                expires_at=r.expires_at,
            )
            for r in sorted(rows.values(), key=lambda r: r.id)[:MAX_ACTIVE_PER_ASSET]
        )
        for asset_id, rows in found.items()
    }


async def audit_expired(tx: WriteTx, limit: int = 500) -> int:
    """Write one ``segment-jit-expire`` record per opening that ran out and
    was not revoked, once (``expired_audited``); returns how many."""
    now = utcnow()
    rows = (
        await tx.session.scalars(
            select(SegmentJitOpening)
            .where(
                SegmentJitOpening.expired_audited.is_(False),
                SegmentJitOpening.revoked_at.is_(None),
                SegmentJitOpening.expires_at <= now,
            )
            .order_by(SegmentJitOpening.id)
            .limit(limit)
        )
    ).all()
    if not rows:
        return 0
    names = dict(
        (
            await tx.session.execute(
                select(SegmentAssetRow.id, SegmentAssetRow.name).where(
                    SegmentAssetRow.id.in_({r.asset_id for r in rows})
                )
            )
        )
        .tuples()
        .all()
    )
    for row in rows:
        row.expired_audited = True
        tx.audit(
            actor="controller",
            action=EXPIRE_ACTION,
            object_type="segment-jit-opening",
            object_id=row.id,
            source=row.source,
            details=details(row, names.get(row.asset_id, "")),
        )
    return len(rows)
