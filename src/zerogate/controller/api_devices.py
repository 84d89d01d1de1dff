"""Enrollment, devices and config distribution.

Provisioning keys (per connector group or per gateway) are shown once and
stored as SHA-256. ``POST /v1/enroll`` takes a key, the device's CSR and
WireGuard public key (its private keys never leave it) and returns a device
certificate and a bearer credential. Each device then fetches and watches
``GET /v1/snapshot``: exactly the config its role needs, at a monotonic
revision; ``?after=N&wait=S`` long-polls until the revision passes N.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Select, Text, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from zerogate import __version__
from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, AnyAccount, DeviceCaller, State, client_source
from zerogate.controller.ids import get_row, row_id, shown_id
from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.reports import read_stored
from zerogate.controller.services.address_pool import default_pool
from zerogate.controller.services.connectors import connector_reports, connector_tunnel
from zerogate.controller.services.enrollment import check_key_usable
from zerogate.controller.services.lookup import by_name
from zerogate.controller.state import (
    Conflict,
    ControllerState,
    Forbidden,
    NotFound,
    Principal,
    Unauthorized,
    Unprocessable,
)
from zerogate.model.snapshot import (
    ClientPeer,
    ClientSnapshot,
    ConnectorEntry,
    ConnectorGroupConfig,
    ConnectorSnapshot,
    GatewayConfig,
    GatewayEntry,
    GatewaySnapshot,
    Snapshot,
)
from zerogate.pki.ca import PKIError, ca_pin, sign_device_csr
from zerogate.pki.credentials import new_token, token_digest, token_hint
from zerogate.pki.install_string import InstallString
from zerogate.pki.wireguard import canonical_public_key
from zerogate.policy.pool import AddressPool, PoolError, gateway_address
from zerogate.store.db import utcnow
from zerogate.store.models import (
    Account,
    AddressPoolRow,
    ApiToken,
    Connector,
    ConnectorGroup,
    Device,
    Gateway,
    ProvisioningKey,
)

router = APIRouter(prefix="/v1", tags=["devices"])


class PemResponse(PlainTextResponse):
    media_type = "application/x-pem-file"  # also what the OpenAPI document says


@router.get("/ca", response_class=PemResponse, tags=["meta"])
async def ca_certificate(state: State) -> PemResponse:
    """The deployment CA (public). Devices check it against the pin they were given."""
    return PemResponse(state.ca_pem.decode())


@router.get("/health", tags=["meta"])
async def health(state: State) -> dict[str, Any]:
    await state.db.ping()
    cache = state.policies
    return {
        "status": "ok",
        "revision": state.watch.current,
        "version": __version__,
        "policy_cache": {"hits": cache.hits, "misses": cache.misses, "revision": cache.revision},
    }


# ----------------------------------------------------------------- provisioning keys


def _key_state(k: ProvisioningKey) -> str:
    if k.revoked_at is not None:
        return "revoked"
    if k.expires_at <= utcnow():
        return "expired"
    if k.uses >= k.max_uses:
        return "used up"
    return "usable"


async def _key_out(session: AsyncSession, k: ProvisioningKey) -> s.ProvisioningKeyOut:
    if k.connector_group_id is not None:
        group = await session.get(ConnectorGroup, k.connector_group_id)
        target = f"connector-group:{group.name if group else k.connector_group_id}"
    else:
        gw = await session.get(Gateway, k.gateway_id)
        target = f"gateway:{gw.name if gw else k.gateway_id}"
    return s.ProvisioningKeyOut(
        id=k.id,
        hint=k.hint,
        description=k.description,
        target=target,
        max_uses=k.max_uses,
        uses=k.uses,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
        state=_key_state(k),
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
) -> s.ProvisioningKeyCreated:
    key = new_token("zgk")
    ttl = body.ttl_minutes or state.settings.provisioning_key_ttl_minutes
    async with state.mutation(admin, "create-provisioning-key", "provisioning-key") as m:
        session = m.tx.session
        row = ProvisioningKey(
            digest=token_digest(key),
            hint=token_hint(key),
            description=body.description,
            max_uses=body.max_uses,
            expires_at=utcnow() + timedelta(minutes=ttl),
            created_by=admin.actor,
            created_at=utcnow(),
        )
        if connector_group is not None:
            row.connector_group_id = (
                await by_name(session, ConnectorGroup, connector_group, "connector group")
            ).id
        else:
            assert gateway is not None
            row.gateway_id = (await by_name(session, Gateway, gateway, "gateway")).id
        session.add(row)
        await session.flush()
        m.object_id = row.id
        m.config_change = False
        m.details = {
            "hint": row.hint,
            "max_uses": row.max_uses,
            "ttl_minutes": ttl,
            "connector_group": connector_group,
            "gateway": gateway,
        }
        out = await _key_out(session, row)
    install = InstallString(controller_url=state.settings.url, ca_pin=ca_pin(state.ca_pem), key=key)
    return s.ProvisioningKeyCreated(**out.model_dump(), key=key, install_string=install.encode())


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


@router.get("/provisioning-keys", response_model=list[s.ProvisioningKeyOut], tags=["provisioning-keys"])
async def list_keys(admin: Admin, state: State) -> list[s.ProvisioningKeyOut]:
    async with state.db.read() as session:
        rows = await session.scalars(select(ProvisioningKey).order_by(ProvisioningKey.id))
        return [await _key_out(session, k) for k in rows]


@router.delete("/provisioning-keys/{key_id}", status_code=204, tags=["provisioning-keys"])
async def revoke_key(key_id: int, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "revoke-provisioning-key", "provisioning-key", shown_id(key_id)) as m:
        row = await get_row(m.tx.session, ProvisioningKey, key_id)
        if row is None:
            raise NotFound(f"no provisioning key with id {shown_id(key_id)}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        m.config_change = False


# ----------------------------------------------------------------- enrollment


def _sign(state: ControllerState, csr: str, name: str, role: str) -> tuple[str, str]:
    try:
        cert, serial = sign_device_csr(
            state.ca_key_pem, state.ca_pem, csr.encode(), common_name=name, role=role
        )
    except PKIError as exc:  # a bad CSR, or a name the certificate cannot carry
        raise Unprocessable(f"csr: {exc}") from None
    return cert.decode(), format(serial, "x")


async def _new_device(
    state: ControllerState,
    session: AsyncSession,
    *,
    role: str,
    name: str,
    csr: str,
    wg_public_key: str,
    account_id: int | None = None,
) -> tuple[Device, str]:
    # Keys are compared by their bytes: the canonical spelling (what the schema
    # stores) and the one other spelling the old check let in, the key with a
    # trailing newline; two peers with one key would share traffic.
    wg_public_key = canonical_public_key(wg_public_key)
    spellings = (wg_public_key, wg_public_key + "\n")
    if await session.scalar(
        select(func.count()).select_from(Device).where(Device.wg_public_key.in_(spellings))
    ):
        raise Conflict("this WireGuard public key is already enrolled; generate a new key pair")
    cert, serial = _sign(state, csr, name, role)
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
    return device, credential


@router.post("/enroll", response_model=s.EnrollResponse, tags=["enrollment"])
async def enroll(body: s.EnrollRequest, request: Request, state: State) -> s.EnrollResponse:
    """Enroll a connector or gateway with a provisioning key."""
    who = Principal(kind="anonymous", name=body.name, source=client_source(request))
    hint = token_hint(body.key)
    # Throttled per source; refusals are aggregated so strangers cannot grow the audit log.
    async with (
        state.key_attempt(who, "enroll", "device", {"key": hint, "name": body.name}),
        state.mutation(who, "enroll", "device", aggregate=True) as m,
    ):
        m.details = {"key": hint, "name": body.name}
        session = m.tx.session
        key = await session.scalar(
            select(ProvisioningKey).where(ProvisioningKey.digest == token_digest(body.key))
        )
        key = check_key_usable(key)
        key.uses += 1
        if key.connector_group_id is not None:
            role = "connector"
            await _free_connector_name(session, body.name)
            device, credential = await _new_device(
                state, session, role=role, name=body.name, csr=body.csr, wg_public_key=body.wg_public_key
            )
            # the gateway probes each connector at this address inside the tunnel
            _, address = await _allocate_address(session, [])
            device.address = str(address)
            session.add(
                Connector(
                    name=body.name,
                    connector_group_id=key.connector_group_id,
                    device_id=device.id,
                    created_at=utcnow(),
                )
            )
        else:
            role = "gateway"
            gw = await session.get(Gateway, key.gateway_id)
            if gw is None:
                raise NotFound("the gateway this key was made for no longer exists")
            if gw.device is not None and gw.device.status == "active":
                gw.device.status, gw.device.revoked_at = "revoked", utcnow()
                m.details["replaced_device"] = gw.device.id
            device, credential = await _new_device(
                state, session, role=role, name=gw.name, csr=body.csr, wg_public_key=body.wg_public_key
            )
            gw.device_id = device.id
        m.object_id = device.id
        m.details["role"] = role
        return s.EnrollResponse(
            device_id=device.id,
            role=role,
            name=device.name,
            credential=credential,
            certificate=device.cert_pem,
            ca_certificate=state.ca_pem.decode(),
        )


async def _allocate_address(
    session: AsyncSession, avoid: list[IPv4Network | IPv6Network]
) -> tuple[AddressPool, IPv4Address]:
    """A free tunnel address from the default pool, outside the ``avoid`` networks."""
    pool_row = await default_pool(session)
    pool = AddressPool(blocks=tuple(ip_network(b) for b in pool_row.blocks))  # type: ignore[misc]
    taken = {
        IPv4Address(a)
        for a in await session.scalars(select(Device.address).where(Device.address.is_not(None)))
    }
    try:
        return pool, pool.allocate(taken, avoid=avoid)
    except PoolError as exc:
        raise Conflict(str(exc)) from None


async def _free_connector_name(session: AsyncSession, name: str) -> None:
    if await session.scalar(select(func.count()).select_from(Connector).where(Connector.name == name)):
        raise Conflict(f"a connector named {name!r} already exists; enroll with another --name")


@router.post("/clients", response_model=s.ClientRegisterResponse, tags=["enrollment"])
async def register_client(
    body: s.ClientRegisterRequest, who: AnyAccount, state: State
) -> s.ClientRegisterResponse:
    """Register the signed-in user's device and give it a pool address.

    If the default block collides with one of the device's own networks, the
    address comes from the first alternate block that does not.
    """
    if who.kind != "user":
        raise Forbidden("client devices belong to users, not admins")
    async with state.mutation(who, "register-client", "device") as m:
        session = m.tx.session
        token = await session.get(ApiToken, who.token_id)
        assert token is not None
        local = [ip_network(n) for n in body.local_networks]
        pool, address = await _allocate_address(session, local)
        block = pool.block_of(address)
        assert block is not None
        device, credential = await _new_device(
            state,
            session,
            role="client",
            name=body.name,
            csr=body.csr,
            wg_public_key=body.wg_public_key,
            account_id=who.id,
        )
        device.address = str(address)
        device.local_networks = [str(n) for n in local]
        device.session_expires_at = token.expires_at
        m.object_id = device.id
        m.details = {"address": str(address), "block": str(block)}
        return s.ClientRegisterResponse(
            device_id=device.id,
            role="client",
            name=device.name,
            credential=credential,
            certificate=device.cert_pem,
            ca_certificate=state.ca_pem.decode(),
            address=str(address),
            address_block=str(block),
            moved_from_default_block=block != pool.blocks[0],
            session_expires_at=token.expires_at,
        )


# ----------------------------------------------------------------- devices and connectors


async def _owners(session: AsyncSession) -> dict[int, str]:
    return {a.id: a.username for a in await session.scalars(select(Account))}


def _device_query() -> Select[Device, str]:
    """Devices with their report as raw text: whatever a report in the database
    holds (10 MB, nesting 100,000 deep, not JSON) it is parsed by
    :func:`read_stored`, which shows it as unavailable instead of failing."""
    return select(Device, cast(Device.report, Text)).options(defer(Device.report)).order_by(Device.id)


def _device_out(d: Device, owners: dict[int, str], raw_report: str | None) -> s.DeviceOut:
    stored, problem = read_stored(raw_report)
    return s.DeviceOut(
        id=d.id,
        role=d.role,
        name=d.name,
        status=d.status,
        owner=owners.get(d.account_id) if d.account_id else None,
        address=d.address,
        wg_public_key=d.wg_public_key,
        cert_serial=d.cert_serial,
        created_at=d.created_at,
        revoked_at=d.revoked_at,
        last_seen_at=d.last_seen_at,
        report=stored,
        report_problem=problem,
    )


@router.get("/devices", response_model=list[s.DeviceOut], tags=["devices"])
async def list_devices(
    admin: Admin, state: State, role: Literal["gateway", "connector", "client"] | None = None
) -> list[s.DeviceOut]:
    async with state.db.read() as session:
        q = _device_query()
        if role:
            q = q.where(Device.role == role)
        owners = await _owners(session)
        return [_device_out(d, owners, raw) for d, raw in (await session.execute(q)).tuples()]


@router.post("/devices/{device_id}/revoke", response_model=s.DeviceOut, tags=["devices"])
async def revoke_device(device_id: int, admin: Admin, state: State) -> s.DeviceOut:
    """Cut the device off: its credential stops working and gateways drop its peer."""
    async with state.mutation(admin, "revoke-device", "device", shown_id(device_id)) as m:
        query = _device_query().where(Device.id == row_id(device_id))
        found = None if row_id(device_id) is None else (await m.tx.session.execute(query)).first()
        if found is None:
            raise NotFound(f"no device with id {shown_id(device_id)}")
        device, raw = found.tuple()
        if device.status != "revoked":
            device.status, device.revoked_at = "revoked", utcnow()
        m.details = {"role": device.role, "name": device.name}
        return _device_out(device, await _owners(m.tx.session), raw)


def _connector_out(c: Connector, group: str, raw_report: str | None) -> s.ConnectorOut:
    return s.ConnectorOut(
        id=c.id,
        name=c.name,
        description=c.description,
        location=c.location,
        bandwidth_class=c.bandwidth_class,
        owner=c.owner,
        connector_group=group,
        device_id=c.device_id,
        status=c.device.status,
        last_seen_at=c.device.last_seen_at,
        created_at=c.created_at,
        **connector_tunnel(raw_report, utcnow()),
    )


async def _group_names(session: AsyncSession) -> dict[int, str]:
    return {g.id: g.name for g in await session.scalars(select(ConnectorGroup))}


@router.get("/connectors", response_model=list[s.ConnectorOut], tags=["connectors"])
async def list_connectors(admin: Admin, state: State) -> list[s.ConnectorOut]:
    async with state.db.read() as session:
        groups = await _group_names(session)
        rows = await session.scalars(select(Connector).order_by(Connector.name))
        reports = await connector_reports(session)
        return [
            _connector_out(c, groups.get(c.connector_group_id, ""), reports.get(c.device_id)) for c in rows
        ]


@router.get("/connectors/{name:path}", response_model=s.ConnectorOut, tags=["connectors"])
async def show_connector(name: str, admin: Admin, state: State) -> s.ConnectorOut:
    async with state.db.read() as session:
        c = await by_name(session, Connector, name, "connector")
        report = (await connector_reports(session, c.device_id)).get(c.device_id)
        return _connector_out(c, (await _group_names(session)).get(c.connector_group_id, ""), report)


@router.patch("/connectors/{name:path}", response_model=s.ConnectorOut, tags=["connectors"])
async def update_connector(name: str, body: s.ConnectorUpdate, admin: Admin, state: State) -> s.ConnectorOut:
    async with state.mutation(admin, "update-connector", "connector") as m:
        c = await by_name(m.tx.session, Connector, name, "connector")
        m.object_id = c.id
        for field, value in body.model_dump(exclude_none=True).items():
            setattr(c, field, value)
        m.details = body.model_dump(exclude_none=True)
        m.config_change = False
        report = (await connector_reports(m.tx.session, c.device_id)).get(c.device_id)
        return _connector_out(c, (await _group_names(m.tx.session)).get(c.connector_group_id, ""), report)


@router.delete("/connectors/{name:path}", status_code=204, tags=["connectors"])
async def delete_connector(name: str, admin: Admin, state: State) -> None:
    """Revoke the connector's device and remove the connector."""
    async with state.mutation(admin, "delete-connector", "connector") as m:
        c = await by_name(m.tx.session, Connector, name, "connector")
        m.object_id, m.details = c.id, {"name": name}
        c.device.status, c.device.revoked_at = "revoked", utcnow()
        await m.tx.session.delete(c)


# ----------------------------------------------------------------- snapshots


async def build_snapshot(
    session: AsyncSession, device: Device, revision: int, policies: PolicyCache
) -> Snapshot:
    """Exactly what this device needs, nothing about anyone else's secrets."""
    pool_row = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    blocks = tuple(pool_row.blocks) if pool_row else ()
    tunnel = tuple(str(gateway_address(ip_network(b))) for b in blocks)  # type: ignore[arg-type]
    gateways = tuple(
        GatewayEntry(
            name=g.name,
            endpoint=g.public_endpoint,
            port=g.port_first,
            port_first=g.port_first,
            port_last=g.port_last,
            wg_public_key=g.device.wg_public_key,
            tunnel_address=tunnel[0] if tunnel else None,
        )
        for g in await session.scalars(select(Gateway).order_by(Gateway.name))
        if g.device is not None and g.device.status == "active"
    )
    groups = {g.id: g for g in await session.scalars(select(ConnectorGroup))}
    base: dict[str, Any] = {"revision": revision, "device_id": device.id, "name": device.name}
    if device.role == "gateway":
        view = await policies.get(session, revision)
        connectors = tuple(
            ConnectorEntry(
                name=c.name,
                device_id=c.device_id,
                wg_public_key=c.device.wg_public_key,
                address=c.device.address,
                connector_group=groups[c.connector_group_id].name,
                subnets=tuple(groups[c.connector_group_id].subnets),
            )
            for c in await session.scalars(select(Connector).order_by(Connector.name))
            if c.device.status == "active"
        )
        client_devices = {d.device_id: d for d in view.inputs.devices}
        clients = tuple(
            ClientPeer(
                device_id=d.id,
                wg_public_key=d.wg_public_key,
                address=d.address,
                session_expires_at=d.session_expires_at,
            )
            for d in await session.scalars(select(Device).where(Device.role == "client").order_by(Device.id))
            if d.id in client_devices
        )
        gw = await session.scalar(select(Gateway).where(Gateway.device_id == device.id))
        return GatewaySnapshot(
            **base,
            gateway=GatewayConfig(
                name=gw.name,
                public_endpoint=gw.public_endpoint,
                port_first=gw.port_first,
                port_last=gw.port_last,
            )
            if gw
            else None,
            tunnel_addresses=tunnel,
            client_blocks=blocks,
            connectors=connectors,
            clients=clients,
            policy=view.gateway_policy(),
        )
    if device.role == "connector":
        c = await session.scalar(select(Connector).where(Connector.device_id == device.id))
        if c is None:
            raise NotFound("this connector was removed")
        g = groups[c.connector_group_id]
        return ConnectorSnapshot(
            **base,
            address=device.address,
            connector_group=ConnectorGroupConfig(
                name=g.name, subnets=tuple(g.subnets), snat=g.snat, vrrp_virtual_ip=g.vrrp_virtual_ip
            ),
            client_blocks=blocks,
            gateways=gateways,
        )
    # client: its address and the destinations its user's policies allow
    view = await policies.get(session, revision)
    rules = view.compiled.rules_for_source(IPv4Address(device.address)) if device.address else ()
    return ClientSnapshot(
        **base,
        address=device.address,
        session_expires_at=device.session_expires_at,
        gateways=gateways,
        routes=tuple(sorted({str(r.destination) for r in rules})),
        applications=tuple(sorted({n for r in rules for n in view.apps_by_policy.get(r.policy_id, [])})),
    )


# A long-poll is a sign of life, but recording each one would turn every watch
# (one per device every WATCH_SECONDS, 25 s) into a database write. The stored
# time itself is the throttle: it is rewritten only once it is this old, which
# also holds across several controllers sharing the database.
LAST_SEEN_EVERY = timedelta(seconds=30)
GOING_AWAY = "controller going away: it is shutting down; reconnect in a moment"


def going_away_response() -> Response:
    """503 for a watch ended by a controller shutdown: the device retries after 1 s."""
    return JSONResponse(
        {"detail": GOING_AWAY}, status_code=503, headers={"Retry-After": "1", "Connection": "close"}
    )


async def _mark_seen(state: ControllerState, device_id: int) -> None:
    async with state.db.write() as tx:
        await tx.session.execute(
            update(Device)
            .where(Device.id == device_id, Device.status == "active")
            .values(last_seen_at=utcnow())
        )


@router.get("/snapshot", tags=["config"])
async def snapshot(
    who: DeviceCaller,
    state: State,
    after: int = Query(-1, ge=-1, description="return as soon as the revision is above this"),
    wait: float = Query(0, ge=0, le=600, description="seconds to wait for a newer revision"),
) -> Any:
    """The device's config snapshot; with ``after``/``wait`` a long-poll watch.

    204 when nothing newer arrived within ``wait`` seconds; 503 with
    ``Retry-After: 1`` when the controller is shutting down. Each call counts
    as a sign of life for ``last_seen_at`` (written at most every 30 s).
    """
    if after >= 0 and state.watch.current <= after and wait > 0:
        await state.watch.wait_past(after, min(wait, state.settings.watch_max_seconds))
    if state.watch.going_away:
        return going_away_response()
    snap: Snapshot | None = None
    async with state.db.read() as session:
        # The revision first, in the same session: whatever is read after it is at
        # least that new, so a device never holds an older snapshot under a newer number.
        revision = await state.db.revision(session)
        device = await session.get(Device, who.id)
        if device is None or device.status != "active":
            raise Unauthorized("device was revoked")
        stale = device.last_seen_at is None or utcnow() - device.last_seen_at >= LAST_SEEN_EVERY
        if after < 0 or revision > after:
            snap = await build_snapshot(session, device, revision, state.policies)
    if stale:
        await _mark_seen(state, who.id)
    if snap is None:
        return Response(status_code=204)
    body = json.dumps(snap.model_dump(mode="json"), sort_keys=True)
    return Response(
        content=body,
        media_type="application/json",
        headers={
            "ETag": hashlib.sha256(body.encode()).hexdigest()[:32],
            "X-Zerogate-Revision": str(revision),
        },
    )


# ----------------------------------------------------------------- data-plane reports and sessions


@router.post("/report", status_code=204, tags=["config"])
async def report(body: s.DeviceReport, who: DeviceCaller, state: State) -> None:
    """A device's data-plane state: peers, last handshakes, bytes, version.

    Not audited and no revision bump: it changes nothing anyone is told.
    """
    async with state.db.write() as tx:
        # The old report is replaced unread: whatever is stored cannot block its replacement.
        device = await tx.session.get(Device, who.id, options=[defer(Device.report)])
        if device is None or device.status != "active":
            raise Unauthorized("device was revoked")
        device.report = body.model_dump(mode="json") | {"at": utcnow().isoformat()}
        device.last_seen_at = utcnow()


@router.post("/clients/{device_id}/session", response_model=s.ClientSessionOut, tags=["enrollment"])
async def renew_client_session(device_id: int, who: AnyAccount, state: State) -> s.ClientSessionOut:
    """Extend the device's session to the caller's sign-in (a fresh password + TOTP login)."""
    async with state.mutation(who, "renew-session", "device", shown_id(device_id)) as m:
        session = m.tx.session
        device = await get_row(session, Device, device_id)
        if device is None or device.role != "client" or device.account_id != who.id:
            raise NotFound(f"you have no client device with id {shown_id(device_id)}")
        if device.status != "active":
            raise Forbidden("this device was revoked: register it again with 'zerogate client up --force'")
        token = await session.get(ApiToken, who.token_id)
        assert token is not None
        device.session_expires_at = token.expires_at
        return s.ClientSessionOut(device_id=device.id, session_expires_at=token.expires_at)
