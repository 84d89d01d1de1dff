"""Provisioning keys as enrollment sees them: is a key usable, and what would it enroll?

The messages are the ones a host that enrolls (or runs ``zerogate
preflight``) shows its operator, so each says what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.state import Forbidden, NotFound, Unauthorized
from zerogate.pki.credentials import token_digest
from zerogate.store.db import utcnow
from zerogate.store.models import ConnectorGroup, Gateway, ProvisioningKey


def check_key_usable(key: ProvisioningKey | None) -> ProvisioningKey:
    """Raise the error ``/v1/enroll`` would give for this key; return it if usable."""
    if key is None:
        raise Unauthorized("provisioning key not recognised: copy the whole install string again")
    if key.revoked_at is not None:
        raise Forbidden("provisioning key was revoked: ask an admin for a new install string")
    if key.expires_at <= utcnow():
        raise Forbidden(
            f"provisioning key expired at {key.expires_at:%Y-%m-%d %H:%M} UTC: "
            "ask an admin for a new install string"
        )
    if key.uses >= key.max_uses:
        raise Forbidden(f"provisioning key already used {key.uses} of {key.max_uses} times")
    return key


@dataclass(frozen=True)
class KeyPreview:
    """What a usable key would enroll, without using it."""

    key: ProvisioningKey
    role: Literal["connector", "gateway"]
    connector_group: ConnectorGroup | None  # a connector key's group (None if it is gone)
    gateway: Gateway | None  # the gateway a gateway key was made for
    gateways: list[Gateway]  # gateways with an active enrolled device: what a connector must reach


async def preview_key(session: AsyncSession, secret: str) -> KeyPreview:
    """The key ``secret`` checked as enrollment would (same errors), and what it enrolls."""
    key = check_key_usable(
        await session.scalar(select(ProvisioningKey).where(ProvisioningKey.digest == token_digest(secret)))
    )
    gateways = [
        g
        for g in await session.scalars(select(Gateway).order_by(Gateway.name))
        if g.device is not None and g.device.status == "active"
    ]
    if key.connector_group_id is not None:
        group = await session.get(ConnectorGroup, key.connector_group_id)
        return KeyPreview(key, "connector", group, None, gateways)
    own = await session.get(Gateway, key.gateway_id)
    if own is None:
        raise NotFound("the gateway this key was made for no longer exists")
    return KeyPreview(key, "gateway", None, own, gateways)
