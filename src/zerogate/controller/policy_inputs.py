"""Read the policy compiler's inputs out of the database.

The compiler itself is pure (``zerogate.policy.compiler``); this is the one
place that turns rows into its frozen input types.
"""

from __future__ import annotations

from datetime import datetime, time
from ipaddress import IPv4Address, ip_network
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.model.policy import (
    AppSpec,
    ClientDevice,
    Destination,
    PolicyInputs,
    PolicySpec,
    PortRange,
    TimeWindow,
    UserSpec,
)
from zerogate.store.db import utcnow
from zerogate.store.models import Account, Application, Device, Policy


def destination_from_json(d: dict[str, Any]) -> Destination:
    return Destination(
        prefix=ip_network(d["address"]),
        protocol=d["protocol"],
        ports=tuple(PortRange.parse(p) for p in d.get("ports", [])),
    )


def window_from_json(w: dict[str, Any] | None) -> TimeWindow | None:
    if w is None:
        return None
    return TimeWindow(
        days=frozenset(w["days"]),
        start=time.fromisoformat(w["start"]),
        end=time.fromisoformat(w["end"]),
        tz=w.get("tz", "UTC"),
    )


async def load_policy_inputs(session: AsyncSession, now: datetime | None = None) -> PolicyInputs:
    """Everything the policy compiler needs; client devices whose session ended by ``now`` are left out."""
    now = now or utcnow()
    users = tuple(
        UserSpec(
            id=a.id,
            name=a.username,
            group_ids=frozenset(g.id for g in a.groups),
            enabled=a.status == "active",
        )
        for a in await session.scalars(select(Account).where(Account.kind == "user"))
    )
    apps = tuple(
        AppSpec(
            id=a.id,
            name=a.name,
            connector_group_id=a.connector_group_id,
            destinations=tuple(destination_from_json(d) for d in a.destinations),
        )
        for a in await session.scalars(select(Application))
    )
    policies = tuple(
        PolicySpec(
            id=p.id,
            name=p.name,
            group_ids=frozenset(g.id for g in p.groups),
            app_ids=frozenset(a.id for a in p.applications),
            require_mfa=p.require_mfa,
            window=window_from_json(p.time_window),
            enabled=p.enabled,
        )
        for p in await session.scalars(select(Policy))
    )
    devices = tuple(
        ClientDevice(device_id=d.id, user_id=d.account_id, address=IPv4Address(d.address), mfa=True)
        for d in await session.scalars(
            select(Device).where(
                Device.role == "client", Device.status == "active", Device.address.is_not(None)
            )
        )
        if d.account_id is not None
        and d.address is not None
        and (d.session_expires_at is None or d.session_expires_at > now)
    )
    return PolicyInputs(users=users, apps=apps, policies=policies, devices=devices)
