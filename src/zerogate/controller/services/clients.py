"""Client devices: a signed-in user's device, its pool address and its session.

A client gets an address from the default pool outside every network it says
it sits on (its LAN, a hotel's, another VPN's): when the default block
collides with one of them, the address comes from the first alternate block
that does not. Its session lasts as long as the sign-in that registered (or
last renewed) it; gateways drop its peer when the session ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, ip_network

from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.ids import get_row, shown_id
from zerogate.controller.services.address_pool import allocate_address
from zerogate.controller.services.enrollment import DeviceCA, Enrolled, new_device
from zerogate.controller.state import Forbidden, NotFound, Principal
from zerogate.store.models import ApiToken, Device


@dataclass(frozen=True)
class Registered:
    """A new client device, where its address came from, and until when it may connect."""

    enrolled: Enrolled
    address: IPv4Address
    block: IPv4Network  # the pool block the address is in
    moved_from_default_block: bool
    session_expires_at: datetime | None


def check_can_register(who: Principal) -> None:
    """Forbidden unless ``who`` is a user: client devices belong to users."""
    if who.kind != "user":
        raise Forbidden("client devices belong to users, not admins")


async def _sign_in_expiry(session: AsyncSession, who: Principal) -> datetime | None:
    token = await session.get(ApiToken, who.token_id)
    assert token is not None  # the caller was authenticated with it in this request
    return token.expires_at


async def register(
    session: AsyncSession, ca: DeviceCA, who: Principal, body: s.ClientRegisterRequest
) -> Registered:
    """Enroll ``who``'s device with an address clear of its local networks."""
    expires_at = await _sign_in_expiry(session, who)
    local = [ip_network(n) for n in body.local_networks]
    pool, address = await allocate_address(session, local)
    block = pool.block_of(address)
    assert block is not None
    enrolled = await new_device(
        session,
        ca,
        role="client",
        name=body.name,
        csr=body.csr,
        wg_public_key=body.wg_public_key,
        account_id=who.id,
    )
    device = enrolled.device
    device.address = str(address)
    device.local_networks = [str(n) for n in local]
    device.session_expires_at = expires_at
    return Registered(enrolled, address, block, block != pool.blocks[0], expires_at)


async def renew_session(session: AsyncSession, who: Principal, device_id: int) -> Device:
    """Extend ``who``'s client device's session to ``who``'s sign-in.

    NotFound when ``who`` has no client device with that id; Forbidden when it was revoked.
    """
    device = await get_row(session, Device, device_id)
    if device is None or device.role != "client" or device.account_id != who.id:
        raise NotFound(f"you have no client device with id {shown_id(device_id)}")
    if device.status != "active":
        raise Forbidden("this device was revoked: register it again with 'zerogate client up --force'")
    device.session_expires_at = await _sign_in_expiry(session, who)
    return device
