"""Provisioning keys: ``POST /v1/connector-groups/{name}/provisioning-keys``,
``POST /v1/gateways/{name}/provisioning-keys``,
``POST /v1/segment-servers/{name}/provisioning-keys``, ``GET /v1/provisioning-keys``
and ``DELETE /v1/provisioning-keys/{key_id}``.

A new key is answered once with its secret and an install string (controller
URL, CA pin, key) for ``zerogate connector install``/``gateway install``.
Keys change no config revision: a key reaches nothing until a device enrolls.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.ids import shown_id
from zerogate.controller.services import provisioning_keys as keys
from zerogate.controller.state import ControllerState, Principal
from zerogate.pki.ca import ca_pin
from zerogate.pki.install_string import InstallString
from zerogate.store.models import ProvisioningKey

router = APIRouter(prefix="/v1", tags=["devices"])


async def _key_out(session: AsyncSession, k: ProvisioningKey) -> s.ProvisioningKeyOut:
    return s.ProvisioningKeyOut(
        id=k.id,
        hint=k.hint,
        description=k.description,
        target=await keys.key_target(session, k),
        max_uses=k.max_uses,
        uses=k.uses,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
        state=keys.key_state(k),
        created_by=k.created_by,
        created_at=k.created_at,
    )


async def _create_key(
    state: ControllerState,
    admin: Principal,
    body: s.ProvisioningKeyCreate,
    *,
    connector_group: str | None = None,
    gateway: str | None = None,
    segment_server: str | None = None,
) -> s.ProvisioningKeyCreated:
    ttl = body.ttl_minutes or state.settings.provisioning_key_ttl_minutes
    async with state.mutation(admin, "create-provisioning-key", "provisioning-key") as m:
        session = m.tx.session
        new = await keys.create(
            session,
            body,
            created_by=admin.actor,
            ttl_minutes=ttl,
            connector_group=connector_group,
            gateway=gateway,
            segment_server=segment_server,
        )
        m.object_id = new.row.id
        m.config_change = False
        m.details = {
            "hint": new.row.hint,
            "max_uses": new.row.max_uses,
            "ttl_minutes": ttl,
            "connector_group": connector_group,
            "gateway": gateway,
            "segment_server": segment_server,
        }
        out = await _key_out(session, new.row)
    install = InstallString(controller_url=state.settings.url, ca_pin=ca_pin(state.ca_pem), key=new.secret)
    return s.ProvisioningKeyCreated(**out.model_dump(), key=new.secret, install_string=install.encode())


@router.post(
    "/connector-groups/{name}/provisioning-keys",
    response_model=s.ProvisioningKeyCreated,
    status_code=201,
    tags=["provisioning-keys"],
)
async def create_connector_key(
    name: str, body: s.ProvisioningKeyCreate, admin: Admin, state: State
) -> s.ProvisioningKeyCreated:
    """A key (and install string) that enrolls connectors into this group. Shown once."""
    return await _create_key(state, admin, body, connector_group=name)


@router.post(
    "/gateways/{name}/provisioning-keys",
    response_model=s.ProvisioningKeyCreated,
    status_code=201,
    tags=["provisioning-keys"],
)
async def create_gateway_key(
    name: str, body: s.ProvisioningKeyCreate, admin: Admin, state: State
) -> s.ProvisioningKeyCreated:
    """A key (and install string) that enrolls the host running this gateway. Shown once."""
    return await _create_key(state, admin, body, gateway=name)


@router.post(
    "/segment-servers/{name}/provisioning-keys",
    response_model=s.ProvisioningKeyCreated,
    status_code=201,
    tags=["provisioning-keys"],
)
async def create_segment_key(
    name: str, body: s.ProvisioningKeyCreate, admin: Admin, state: State
) -> s.ProvisioningKeyCreated:
    """A key (and install string) that enrolls the host running this segment server. Shown once."""
    return await _create_key(state, admin, body, segment_server=name)


@router.get("/provisioning-keys", response_model=list[s.ProvisioningKeyOut], tags=["provisioning-keys"])
async def list_keys(admin: Admin, state: State) -> list[s.ProvisioningKeyOut]:
    async with state.db.read() as session:
        return [await _key_out(session, k) for k in await keys.list_keys(session)]


@router.delete("/provisioning-keys/{key_id}", status_code=204, tags=["provisioning-keys"])
async def revoke_key(key_id: int, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "revoke-provisioning-key", "provisioning-key", shown_id(key_id)) as m:
        await keys.revoke(m.tx.session, key_id)
        m.config_change = False
