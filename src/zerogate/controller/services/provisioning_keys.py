"""Provisioning keys: what enrolls a connector into a group, or the host of a
gateway or of a segment server.

A key is made for one connector group, gateway or segment server, for ``max_uses``
enrollments until it expires. Its secret is returned once at creation and
stored only as a SHA-256 digest and a short hint. Revoking a key is final;
whether a key may still be used is :func:`~.enrollment.check_key_usable`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.ids import get_row, shown_id
from zerogate.controller.services.lookup import by_name
from zerogate.controller.state import NotFound
from zerogate.pki.credentials import new_token, token_digest, token_hint
from zerogate.store.db import utcnow
from zerogate.store.models import ConnectorGroup, Gateway, ProvisioningKey, SegmentServer


@dataclass(frozen=True)
class NewKey:
    """A created key and its secret (the only time it is known)."""

    row: ProvisioningKey
    secret: str


def key_state(k: ProvisioningKey) -> str:
    """The key's state as listings show it: revoked, expired, used up or usable."""
    if k.revoked_at is not None:
        return "revoked"
    if k.expires_at <= utcnow():
        return "expired"
    if k.uses >= k.max_uses:
        return "used up"
    return "usable"


async def key_target(session: AsyncSession, k: ProvisioningKey) -> str:
    """What the key enrolls: ``connector-group:<name>``, ``gateway:<name>`` or
    ``segment-server:<name>`` (the id once it is gone)."""
    if k.connector_group_id is not None:
        group = await session.get(ConnectorGroup, k.connector_group_id)
        return f"connector-group:{group.name if group else k.connector_group_id}"
    if k.segment_server_id is not None:
        server = await session.get(SegmentServer, k.segment_server_id)
        return f"segment-server:{server.name if server else k.segment_server_id}"
    gw = await session.get(Gateway, k.gateway_id)
    return f"gateway:{gw.name if gw else k.gateway_id}"


async def create(
    session: AsyncSession,
    body: s.ProvisioningKeyCreate,
    *,
    created_by: str,
    ttl_minutes: int,
    connector_group: str | None = None,
    gateway: str | None = None,
    segment_server: str | None = None,
) -> NewKey:
    """A key for the named connector group (or else segment server, or else
    gateway); NotFound when it does not exist."""
    secret = new_token("zgk")
    row = ProvisioningKey(
        digest=token_digest(secret),
        hint=token_hint(secret),
        description=body.description,
        max_uses=body.max_uses,
        expires_at=utcnow() + timedelta(minutes=ttl_minutes),
        created_by=created_by,
        created_at=utcnow(),
    )
    if connector_group is not None:
        row.connector_group_id = (
            await by_name(session, ConnectorGroup, connector_group, "connector group")
        ).id
    elif segment_server is not None:
        row.segment_server_id = (await by_name(session, SegmentServer, segment_server, "segment server")).id
    else:
        assert gateway is not None
        row.gateway_id = (await by_name(session, Gateway, gateway, "gateway")).id
    session.add(row)
    await session.flush()
    return NewKey(row, secret)


async def list_keys(session: AsyncSession) -> Sequence[ProvisioningKey]:
    return (await session.scalars(select(ProvisioningKey).order_by(ProvisioningKey.id))).all()


async def revoke(session: AsyncSession, key_id: int) -> ProvisioningKey:
    """Revoke the key (once: a second revoke keeps the first time); NotFound for an unknown id."""
    row = await get_row(session, ProvisioningKey, key_id)
    if row is None:
        raise NotFound(f"no provisioning key with id {shown_id(key_id)}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
