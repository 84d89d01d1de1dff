"""Enrollment: is a provisioning key usable, what would it enroll, and enrolling with it.

A connector, gateway or segment server enrolls with a provisioning key, its CSR and its
WireGuard public key (its private keys never leave it) and gets a device
certificate signed by the deployment CA and a bearer credential (shown once,
stored as a digest). A connector also gets a tunnel address from the pool; a
gateway's or segment server's new device replaces the one it had.

The messages are the ones a host that enrolls (or runs ``zerogate
preflight``) shows its operator, so each says what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.services.address_pool import allocate_address
from zerogate.controller.state import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from zerogate.pki.ca import PKIError, sign_device_csr
from zerogate.pki.credentials import new_token, token_digest
from zerogate.pki.wireguard import canonical_public_key
from zerogate.store.db import utcnow
from zerogate.store.models import Connector, ConnectorGroup, Device, Gateway, ProvisioningKey, SegmentServer


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
    role: Literal["connector", "gateway", "segment"]
    connector_group: ConnectorGroup | None  # a connector key's group (None if it is gone)
    gateway: Gateway | None  # the gateway a gateway key was made for
    gateways: list[Gateway]  # gateways with an active enrolled device: what a connector must reach
    segment_server: SegmentServer | None = None  # the segment server a segment key was made for


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
    if key.segment_server_id is not None:
        server = await session.get(SegmentServer, key.segment_server_id)
        if server is None:
            raise NotFound("the segment server this key was made for no longer exists")
        return KeyPreview(key, "segment", None, None, gateways, server)
    own = await session.get(Gateway, key.gateway_id)
    if own is None:
        raise NotFound("the gateway this key was made for no longer exists")
    return KeyPreview(key, "gateway", None, own, gateways)


@dataclass(frozen=True)
class DeviceCA:
    """The deployment CA, as enrollment uses it: it signs device CSRs."""

    cert_pem: bytes
    key_pem: bytes

    def sign(self, csr: str, name: str, role: str) -> tuple[str, str]:
        """The device certificate (PEM) and its serial (hex); Unprocessable for a bad CSR."""
        try:
            cert, serial = sign_device_csr(
                self.key_pem, self.cert_pem, csr.encode(), common_name=name, role=role
            )
        except PKIError as exc:  # a bad CSR, or a name the certificate cannot carry
            raise Unprocessable(f"csr: {exc}") from None
        return cert.decode(), format(serial, "x")


@dataclass(frozen=True)
class Enrolled:
    """A new device and its bearer credential (the only time it is known)."""

    device: Device
    credential: str


async def new_device(
    session: AsyncSession,
    ca: DeviceCA,
    *,
    role: str,
    name: str,
    csr: str,
    wg_public_key: str,
    account_id: int | None = None,
) -> Enrolled:
    """Sign the CSR and add an active device; Conflict when its WireGuard key is taken."""
    # Keys are compared by their bytes: the canonical spelling (what the schema
    # stores) and the one other spelling the old check let in, the key with a
    # trailing newline; two peers with one key would share traffic.
    wg_public_key = canonical_public_key(wg_public_key)
    spellings = (wg_public_key, wg_public_key + "\n")
    if await session.scalar(
        select(func.count()).select_from(Device).where(Device.wg_public_key.in_(spellings))
    ):
        raise Conflict("this WireGuard public key is already enrolled; generate a new key pair")
    cert, serial = ca.sign(csr, name, role)
    credential = new_token("zgd")
    device = Device(
        role=role,
        name=name,
        credential_digest=token_digest(credential),
        wg_public_key=wg_public_key,
        cert_serial=serial,
        cert_pem=cert,
        account_id=account_id,
        created_at=utcnow(),
    )
    session.add(device)
    await session.flush()
    return Enrolled(device, credential)


async def enroll(
    session: AsyncSession, ca: DeviceCA, body: s.EnrollRequest, details: dict[str, Any]
) -> Enrolled:
    """Use one of the key's uses and enroll what it was made for: a connector
    into its group (named ``body.name``, with a tunnel address) or the host of
    its gateway (named after the gateway; a device it had is revoked).

    ``details`` are the audit record's: a replaced device's id goes in as soon
    as it is replaced, so a refusal after that names it too.
    """
    key = check_key_usable(
        await session.scalar(select(ProvisioningKey).where(ProvisioningKey.digest == token_digest(body.key)))
    )
    key.uses += 1
    if key.connector_group_id is not None:
        if await session.scalar(
            select(func.count()).select_from(Connector).where(Connector.name == body.name)
        ):
            raise Conflict(f"a connector named {body.name!r} already exists; enroll with another --name")
        enrolled = await new_device(
            session, ca, role="connector", name=body.name, csr=body.csr, wg_public_key=body.wg_public_key
        )
        # the gateway probes each connector at this address inside the tunnel
        _, address = await allocate_address(session, [])
        enrolled.device.address = str(address)
        session.add(
            Connector(
                name=body.name,
                connector_group_id=key.connector_group_id,
                device_id=enrolled.device.id,
                created_at=utcnow(),
            )
        )
        return enrolled
    if key.segment_server_id is not None:
        return await _enroll_host(session, ca, body, details, key.segment_server_id)
    gw = await session.get(Gateway, key.gateway_id)
    if gw is None:
        raise NotFound("the gateway this key was made for no longer exists")
    if gw.device is not None and gw.device.status == "active":
        gw.device.status, gw.device.revoked_at = "revoked", utcnow()
        details["replaced_device"] = gw.device.id
    enrolled = await new_device(
        session, ca, role="gateway", name=gw.name, csr=body.csr, wg_public_key=body.wg_public_key
    )
    gw.device_id = enrolled.device.id
    return enrolled


async def _enroll_host(
    session: AsyncSession, ca: DeviceCA, body: s.EnrollRequest, details: dict[str, Any], server_id: int
) -> Enrolled:
    """The host of a segment server: named after the server; a device it had is revoked."""
    server = await session.get(SegmentServer, server_id)
    if server is None:
        raise NotFound("the segment server this key was made for no longer exists")
    if server.device is not None and server.device.status == "active":
        server.device.status, server.device.revoked_at = "revoked", utcnow()
        details["replaced_device"] = server.device.id
    enrolled = await new_device(
        session, ca, role="segment", name=server.name, csr=body.csr, wg_public_key=body.wg_public_key
    )
    server.device_id = enrolled.device.id
    return enrolled
