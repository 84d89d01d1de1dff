"""The device side of the controller's rules, called without HTTP on a real SQLite database.

Enrollment with provisioning keys, client registration and its addresses,
revocation and what gateways are then told. Each step runs in a transaction
of its own that commits on success and rolls back on a refusal, as a request
would.
"""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from servicedb import Step, migrated, seed_default_pool, steps
from zerogate.controller import schemas as s
from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.services import (
    clients,
    connector_groups,
    devices,
    enrollment,
    gateways,
    provisioning_keys,
    snapshots,
)
from zerogate.controller.services.enrollment import DeviceCA, Enrolled
from zerogate.controller.state import Forbidden, Principal
from zerogate.model.snapshot import GatewaySnapshot
from zerogate.pki.ca import create_ca, create_csr, generate_private_key
from zerogate.pki.credentials import new_token, token_digest, token_hint
from zerogate.pki.wireguard import generate_keypair
from zerogate.store.db import utcnow
from zerogate.store.models import Account, ApiToken, Device, ProvisioningKey

T = TypeVar("T")


@pytest.fixture
def step(tmp_path: Path) -> Step:
    """Run one unit of work in its own committed transaction on a fresh database."""
    run = steps(migrated(tmp_path))

    async def seed(session: AsyncSession) -> None:
        await seed_default_pool(session)
        await connector_groups.create(
            session, s.ConnectorGroupCreate(name="site-a", subnets=["10.50.0.0/24"])
        )
        await gateways.create(session, s.GatewayCreate(name="edge", public_endpoint="gw.example.net"))

    run(seed)
    return run


@pytest.fixture(scope="module")
def ca() -> DeviceCA:
    key, cert = create_ca("services test CA")
    return DeviceCA(cert_pem=cert, key_pem=key)


def csr(name: str) -> str:
    return create_csr(generate_private_key(), name).decode()


def wg_key() -> str:
    return generate_keypair()[1]


def new_key(step: Step, *, max_uses: int = 1, **target: str) -> str:
    """A provisioning key's secret for ``connector_group=`` or ``gateway=``."""
    body = s.ProvisioningKeyCreate(max_uses=max_uses)
    made = step(
        lambda db: provisioning_keys.create(db, body, created_by="admin:root", ttl_minutes=60, **target)
    )
    return made.secret


def enroll(step: Step, ca: DeviceCA, key: str, name: str) -> Enrolled:
    body = s.EnrollRequest(key=key, name=name, csr=csr(name), wg_public_key=wg_key())
    return step(lambda db: enrollment.enroll(db, ca, body, {}))


async def device_names(db: AsyncSession) -> list[str]:
    return [d.name for d, _ in await devices.list_devices(db)]


def user_signed_in(step: Step, username: str) -> Principal:
    """A user account with a sign-in session, as the caller a request would carry."""

    async def work(db: AsyncSession) -> Principal:
        now = utcnow()
        account = Account(kind="user", username=username, status="active", created_at=now, updated_at=now)
        db.add(account)
        await db.flush()
        secret = new_token("zgs")
        token = ApiToken(
            digest=token_digest(secret),
            hint=token_hint(secret),
            kind="session",
            account_id=account.id,
            mfa=True,
            expires_at=now + timedelta(hours=8),
            created_at=now,
        )
        db.add(token)
        await db.flush()
        return Principal(kind="user", id=account.id, name=username, token_id=token.id, mfa=True)

    return step(work)


def register(step: Step, ca: DeviceCA, who: Principal, name: str, *local: str) -> clients.Registered:
    body = s.ClientRegisterRequest(
        name=name, csr=csr(name), wg_public_key=wg_key(), local_networks=list(local)
    )
    return step(lambda db: clients.register(db, ca, who, body))


# ----------------------------------------------------------------- enrollment


def test_a_used_up_key_enrolls_nothing_more(step: Step, ca: DeviceCA) -> None:
    key = new_key(step, connector_group="site-a")
    first = enroll(step, ca, key, "conn-1")
    assert (first.device.role, first.device.address) == ("connector", "100.64.0.2")
    with pytest.raises(Forbidden, match="provisioning key already used 1 of 1 times"):
        enroll(step, ca, key, "conn-2")
    assert step(device_names) == ["conn-1"]


def test_an_expired_key_enrolls_nothing(step: Step, ca: DeviceCA) -> None:
    key = new_key(step, gateway="edge", max_uses=5)

    async def expire(db: AsyncSession) -> None:
        row = await db.scalar(select(ProvisioningKey).where(ProvisioningKey.digest == token_digest(key)))
        assert row is not None
        row.expires_at = utcnow() - timedelta(minutes=1)

    step(expire)
    with pytest.raises(
        Forbidden, match=r"provisioning key expired at .* UTC: ask an admin for a new install"
    ):
        enroll(step, ca, key, "edge")
    assert step(device_names) == []

    async def uses(db: AsyncSession) -> int:
        return (await provisioning_keys.list_keys(db))[0].uses

    assert step(uses) == 0  # a refusal uses nothing up


# ----------------------------------------------------------------- client addresses


def test_a_client_gets_its_address_outside_its_own_networks(step: Step, ca: DeviceCA) -> None:
    ann = user_signed_in(step, "ann")
    home = register(step, ca, ann, "laptop-home")
    assert (str(home.address), home.moved_from_default_block) == ("100.64.0.2", False)
    # a hotel network that happens to be the default block: the next block instead
    hotel = register(step, ca, ann, "laptop-hotel", "192.168.1.0/24", "100.64.0.0/16")
    assert hotel.address == IPv4Address("100.65.0.2")
    assert (str(hotel.block), hotel.moved_from_default_block) == ("100.65.0.0/16", True)
    assert hotel.enrolled.device.local_networks == ["192.168.1.0/24", "100.64.0.0/16"]


# ----------------------------------------------------------------- revocation


def test_a_revoked_device_leaves_the_gateway_snapshot(step: Step, ca: DeviceCA) -> None:
    gateway = enroll(step, ca, new_key(step, gateway="edge"), "edge").device
    connector = enroll(step, ca, new_key(step, connector_group="site-a"), "conn-1").device
    client = register(step, ca, user_signed_in(step, "ann"), "laptop").enrolled.device

    async def peers(db: AsyncSession) -> tuple[list[str], list[int]]:
        me = await db.get(Device, gateway.id)
        assert me is not None
        snap = await snapshots.build_snapshot(db, me, 1, PolicyCache())
        assert isinstance(snap, GatewaySnapshot)
        return [c.name for c in snap.connectors], [c.device_id for c in snap.clients]

    assert step(peers) == (["conn-1"], [client.id])
    step(lambda db: devices.revoke(db, client.id))
    assert step(peers) == (["conn-1"], [])
    step(lambda db: devices.revoke(db, connector.id))
    assert step(peers) == ([], [])
