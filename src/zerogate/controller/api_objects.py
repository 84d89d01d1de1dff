"""Admin API for the deployment's objects: accounts, groups, connector groups,
gateways, applications, policies, the client address pool and the audit log.

Every write runs inside :meth:`ControllerState.mutation`, so it is audited and
either commits whole (with a new config revision) or changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address, ip_network
from typing import Any, Literal, TypedDict, TypeVar

from fastapi import APIRouter, Query
from sqlalchemy import Text, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import membership
from zerogate.controller import schemas as s
from zerogate.controller.auth import Admin, State
from zerogate.controller.membership import chunks
from zerogate.controller.policy_inputs import load_policy_inputs
from zerogate.controller.reports import StoredReport, read_stored
from zerogate.controller.state import (
    Conflict,
    ControllerState,
    NotFound,
    Unprocessable,
)
from zerogate.pki.credentials import new_token, token_digest
from zerogate.policy.compiler import explain as explain_policy
from zerogate.store.audit_verify import verify_audit_log
from zerogate.store.db import utcnow
from zerogate.store.models import (
    Account,
    AddressPoolRow,
    ApiToken,
    Application,
    AuditRecord,
    Connector,
    ConnectorGroup,
    Device,
    Gateway,
    Group,
    Policy,
)

router = APIRouter(prefix="/v1", tags=["objects"])

T = TypeVar("T", Account, Group, ConnectorGroup, Gateway, Application, Policy, Connector)


async def by_name(session: AsyncSession, model: type[T], name: str, what: str) -> T:
    column = model.username if model is Account else model.name  # type: ignore[attr-defined]
    row = await session.scalar(select(model).where(column == name))
    if row is None:
        raise NotFound(f"no {what} named {name!r}")
    return row


async def all_by_name(session: AsyncSession, model: type[T], names: list[str], what: str) -> list[T]:
    """The named rows in the order given (each once); one IN query per chunk,
    not one per name. A 404 names the first one missing."""
    wanted = list(dict.fromkeys(names))
    column = model.username if model is Account else model.name  # type: ignore[attr-defined]
    found: dict[str, T] = {}
    for part in chunks(wanted):
        found.update(
            (getattr(row, column.key), row)
            for row in await session.scalars(select(model).where(column.in_(part)))
        )
    for name in wanted:
        if name not in found:
            raise NotFound(f"no {what} named {name!r}")
    return [found[name] for name in wanted]


async def ensure_free(session: AsyncSession, model: type[T], name: str, what: str) -> None:
    column = model.username if model is Account else model.name  # type: ignore[attr-defined]
    if await session.scalar(select(func.count()).select_from(model).where(column == name)):
        raise Conflict(f"a {what} named {name!r} already exists")


# ----------------------------------------------------------------- accounts


def account_out(a: Account) -> s.AccountOut:
    return s.AccountOut(
        id=a.id,
        kind=a.kind,
        username=a.username,
        display_name=a.display_name,
        email=a.email,
        status=a.status,
        totp_enrolled=a.totp_confirmed,
        groups=sorted(g.name for g in a.groups),
        created_at=a.created_at,
    )


def _new_activation(state: ControllerState, account: Account) -> tuple[str, datetime]:
    code = new_token("zga")
    account.activation_digest = token_digest(code)
    account.activation_expires_at = utcnow() + timedelta(hours=state.settings.activation_ttl_hours)
    return code, account.activation_expires_at


def _account_routes(kind: str, plural: str) -> None:
    async def get_account(session: AsyncSession, username: str) -> Account:
        account = await by_name(session, Account, username, kind)
        if account.kind != kind:
            other = "an admin" if account.kind == "admin" else "a user"
            raise NotFound(f"no {kind} named {username!r} ({username} is {other})")
        return account

    async def list_accounts(admin: Admin, state: State) -> list[s.AccountOut]:
        async with state.db.read() as session:
            rows = await session.scalars(
                select(Account).where(Account.kind == kind).order_by(Account.username)
            )
            return [account_out(a) for a in rows]

    async def create_account(body: s.AccountCreate, admin: Admin, state: State) -> s.AccountCreated:
        async with state.mutation(admin, f"create-{kind}", kind) as m:
            session = m.tx.session
            await ensure_free(session, Account, body.username, "account")
            if kind == "admin" and body.groups:
                raise Unprocessable("admins are not members of user groups")
            groups = await all_by_name(session, Group, body.groups, "group")
            now = utcnow()
            account = Account(
                kind=kind,
                username=body.username,
                display_name=body.display_name,
                email=body.email,
                status="pending",
                created_at=now,
                updated_at=now,
                groups=groups,
            )
            code, expires = _new_activation(state, account)
            session.add(account)
            await session.flush()
            m.object_id = account.id
            m.details = {"username": body.username}
            m.config_change = False  # a pending account reaches nothing yet
            return s.AccountCreated(
                **account_out(account).model_dump(), activation_code=code, activation_expires_at=expires
            )

    async def show_account(username: str, admin: Admin, state: State) -> s.AccountOut:
        async with state.db.read() as session:
            return account_out(await get_account(session, username))

    async def update_account(
        username: str, body: s.AccountUpdate, admin: Admin, state: State
    ) -> s.AccountOut:
        async with state.mutation(admin, f"update-{kind}", kind) as m:
            session = m.tx.session
            account = await get_account(session, username)
            m.object_id = account.id
            if body.display_name is not None:
                account.display_name = body.display_name
            if body.email is not None:
                account.email = body.email
            if body.groups is not None:
                if kind == "admin" and body.groups:
                    raise Unprocessable("admins are not members of user groups")
                account.groups = await all_by_name(session, Group, body.groups, "group")
            if body.disabled is not None:
                if body.disabled and account.id == admin.id:
                    raise Unprocessable("you cannot disable your own account")
                if body.disabled:
                    account.status = "disabled"
                    await _cut_off_account(session, account)
                elif account.status == "disabled":
                    account.status = "active" if account.totp_confirmed else "pending"
            account.updated_at = utcnow()
            m.details = body.model_dump(exclude_none=True)
            return account_out(account)

    async def reset_account(username: str, admin: Admin, state: State) -> s.AccountCreated:
        """New activation code: the account must set a new password and TOTP."""
        async with state.mutation(admin, f"reset-{kind}", kind) as m:
            account = await get_account(m.tx.session, username)
            if account.id == admin.id:
                raise Unprocessable("you cannot reset your own account; ask another admin")
            account.password_hash = None
            account.totp_secret = None
            account.totp_confirmed = False
            account.totp_last_step = None
            account.status = "pending"
            await _cut_off_account(m.tx.session, account)
            code, expires = _new_activation(state, account)
            m.object_id = account.id
            return s.AccountCreated(
                **account_out(account).model_dump(), activation_code=code, activation_expires_at=expires
            )

    async def delete_account(username: str, admin: Admin, state: State) -> None:
        async with state.mutation(admin, f"delete-{kind}", kind) as m:
            account = await get_account(m.tx.session, username)
            if account.id == admin.id:
                raise Unprocessable("you cannot delete your own account")
            m.object_id = account.id
            m.details = {"username": username}
            await m.tx.session.delete(account)

    router.add_api_route(
        f"/{plural}", list_accounts, methods=["GET"], response_model=list[s.AccountOut], tags=[plural]
    )
    router.add_api_route(
        f"/{plural}",
        create_account,
        methods=["POST"],
        status_code=201,
        response_model=s.AccountCreated,
        tags=[plural],
    )
    router.add_api_route(
        f"/{plural}/{{username}}", show_account, methods=["GET"], response_model=s.AccountOut, tags=[plural]
    )
    router.add_api_route(
        f"/{plural}/{{username}}",
        update_account,
        methods=["PATCH"],
        response_model=s.AccountOut,
        tags=[plural],
    )
    router.add_api_route(
        f"/{plural}/{{username}}/reset",
        reset_account,
        methods=["POST"],
        response_model=s.AccountCreated,
        tags=[plural],
    )
    router.add_api_route(
        f"/{plural}/{{username}}", delete_account, methods=["DELETE"], status_code=204, tags=[plural]
    )


async def _cut_off_account(session: AsyncSession, account: Account) -> None:
    """Revoke every token and client device of an account (takes effect at once)."""
    now = utcnow()
    for token in await session.scalars(
        select(ApiToken).where(ApiToken.account_id == account.id, ApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = now
    for device in await session.scalars(
        select(Device).where(Device.account_id == account.id, Device.status == "active")
    ):
        device.status = "revoked"
        device.revoked_at = now


_account_routes("admin", "admins")
_account_routes("user", "users")


# ----------------------------------------------------------------- groups


def group_out(g: Group, members: list[str]) -> s.GroupOut:
    return s.GroupOut(
        id=g.id, name=g.name, description=g.description, members=members, created_at=g.created_at
    )


async def _group_out(session: AsyncSession, g: Group) -> s.GroupOut:
    return group_out(g, (await membership.member_names(session, [g.id]))[g.id])


@router.get("/groups", response_model=list[s.GroupOut], tags=["groups"])
async def list_groups(admin: Admin, state: State) -> list[s.GroupOut]:
    async with state.db.read() as session:
        members = await membership.member_names(session)
        return [
            group_out(g, members.get(g.id, []))
            for g in await session.scalars(select(Group).order_by(Group.name))
        ]


@router.post("/groups", response_model=s.GroupOut, status_code=201, tags=["groups"])
async def create_group(body: s.GroupCreate, admin: Admin, state: State) -> s.GroupOut:
    async with state.mutation(admin, "create-group", "group") as m:
        session = m.tx.session
        await ensure_free(session, Group, body.name, "group")
        ids = await membership.user_ids(session, body.members)
        group = Group(name=body.name, description=body.description, created_at=utcnow())
        session.add(group)
        await session.flush()
        await membership.insert_members(session, group.id, list(ids.values()))
        m.object_id, m.details = group.id, {"name": body.name}
        return group_out(group, sorted(ids))


@router.get("/groups/{name}", response_model=s.GroupOut, tags=["groups"])
async def show_group(name: str, admin: Admin, state: State) -> s.GroupOut:
    async with state.db.read() as session:
        return await _group_out(session, await by_name(session, Group, name, "group"))


@router.patch("/groups/{name}", response_model=s.GroupOut, tags=["groups"])
async def update_group(name: str, body: s.GroupUpdate, admin: Admin, state: State) -> s.GroupOut:
    """``members`` replaces the whole list; to add or remove a few, use PATCH /v1/groups/{name}/members."""
    async with state.mutation(admin, "update-group", "group") as m:
        session = m.tx.session
        group = await by_name(session, Group, name, "group")
        m.object_id = group.id
        m.details = body.model_dump(exclude_none=True, exclude={"members"})
        if body.description is not None:
            group.description = body.description
        if body.members is not None:
            # The audit record says what changed, not the whole (possibly huge) list.
            added, removed = await membership.replace_members(session, group.id, body.members)
            m.details |= {"members_added": added, "members_removed": removed}
        return await _group_out(session, group)


@router.patch("/groups/{name}/members", response_model=s.GroupMembersChanged, tags=["groups"])
async def change_group_members(
    name: str, body: s.GroupMembersChange, admin: Admin, state: State
) -> s.GroupMembersChanged:
    """Add and remove members without sending the whole list; costs O(change), not O(group size).

    Adding a member or removing a non-member changes nothing (and is no error).
    """
    async with state.mutation(admin, "update-group-members", "group") as m:
        session = m.tx.session
        group = await by_name(session, Group, name, "group")
        m.object_id = group.id
        added, removed = await membership.change_members(session, group.id, body.add, body.remove)
        m.details = {"name": name, "members_added": added, "members_removed": removed}
        m.config_change = bool(added or removed)
        return s.GroupMembersChanged(
            name=name,
            added=added,
            removed=removed,
            member_count=await membership.member_count(session, group.id),
        )


@router.delete("/groups/{name}", status_code=204, tags=["groups"])
async def delete_group(name: str, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "delete-group", "group") as m:
        group = await by_name(m.tx.session, Group, name, "group")
        m.object_id, m.details = group.id, {"name": name}
        users = await m.tx.session.scalars(select(Policy).where(Policy.groups.contains(group)))
        names = [p.name for p in users]
        if names:
            raise Conflict(f"group {name!r} is used by policies: {', '.join(names)}")
        await m.tx.session.delete(group)


# ----------------------------------------------------------------- connector groups


async def connector_group_out(session: AsyncSession, g: ConnectorGroup) -> s.ConnectorGroupOut:
    connectors = await session.scalars(
        select(Connector.name).where(Connector.connector_group_id == g.id).order_by(Connector.name)
    )
    return s.ConnectorGroupOut(
        id=g.id,
        name=g.name,
        description=g.description,
        subnets=g.subnets,
        snat=g.snat,
        vrrp_virtual_ip=g.vrrp_virtual_ip,
        connectors=list(connectors),
        created_at=g.created_at,
    )


async def _check_subnets_free(session: AsyncSession, subnets: list[str], own_id: int | None) -> None:
    """Two connector groups fronting overlapping subnets would make routing
    ambiguous; a fronted subnet inside the client address pool would route
    clients' own addresses to a site."""
    pool = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    for block in pool.blocks if pool is not None else ():
        for mine in subnets:
            if s.overlapping(mine, block):
                raise Conflict(
                    f"subnet {mine} overlaps client address block {block}, from which clients get their "
                    "addresses; front another subnet or move the pool (PUT /v1/address-pool)"
                )
    for other in await session.scalars(select(ConnectorGroup)):
        if other.id == own_id:
            continue
        for mine in subnets:
            for theirs in other.subnets:
                if s.overlapping(mine, theirs):
                    raise Conflict(f"subnet {mine} overlaps {theirs} of connector group {other.name!r}")


async def _check_apps_inside(session: AsyncSession, group: ConnectorGroup) -> None:
    for app in await session.scalars(select(Application).where(Application.connector_group_id == group.id)):
        _destinations_inside(app.name, app.destinations, group)


def _destinations_inside(app: str, destinations: list[dict[str, Any]], group: ConnectorGroup) -> None:
    subnets = [ip_network(n) for n in group.subnets]
    for d in destinations:
        net = ip_network(d["address"])
        if not any(net.version == sn.version and net.subnet_of(sn) for sn in subnets):  # type: ignore[arg-type]
            raise Unprocessable(
                f"application {app!r}: destination {net} is outside the subnets of connector group "
                f"{group.name!r} ({', '.join(group.subnets)})"
            )


@router.get("/connector-groups", response_model=list[s.ConnectorGroupOut], tags=["connector-groups"])
async def list_connector_groups(admin: Admin, state: State) -> list[s.ConnectorGroupOut]:
    async with state.db.read() as session:
        rows = await session.scalars(select(ConnectorGroup).order_by(ConnectorGroup.name))
        return [await connector_group_out(session, g) for g in rows]


@router.post(
    "/connector-groups", response_model=s.ConnectorGroupOut, status_code=201, tags=["connector-groups"]
)
async def create_connector_group(
    body: s.ConnectorGroupCreate, admin: Admin, state: State
) -> s.ConnectorGroupOut:
    async with state.mutation(admin, "create-connector-group", "connector-group") as m:
        session = m.tx.session
        await ensure_free(session, ConnectorGroup, body.name, "connector group")
        await _check_subnets_free(session, body.subnets, None)
        group = ConnectorGroup(
            name=body.name,
            description=body.description,
            subnets=body.subnets,
            snat=body.snat,
            vrrp_virtual_ip=body.vrrp_virtual_ip,
            created_at=utcnow(),
        )
        session.add(group)
        await session.flush()
        m.object_id, m.details = group.id, body.model_dump()
        return await connector_group_out(session, group)


@router.get("/connector-groups/{name}", response_model=s.ConnectorGroupOut, tags=["connector-groups"])
async def show_connector_group(name: str, admin: Admin, state: State) -> s.ConnectorGroupOut:
    async with state.db.read() as session:
        return await connector_group_out(
            session, await by_name(session, ConnectorGroup, name, "connector group")
        )


@router.patch("/connector-groups/{name}", response_model=s.ConnectorGroupOut, tags=["connector-groups"])
async def update_connector_group(
    name: str, body: s.ConnectorGroupUpdate, admin: Admin, state: State
) -> s.ConnectorGroupOut:
    async with state.mutation(admin, "update-connector-group", "connector-group") as m:
        session = m.tx.session
        group = await by_name(session, ConnectorGroup, name, "connector group")
        m.object_id = group.id
        merged = s.ConnectorGroupBody(
            description=group.description if body.description is None else body.description,
            subnets=group.subnets if body.subnets is None else body.subnets,
            snat=group.snat if body.snat is None else body.snat,
            vrrp_virtual_ip=group.vrrp_virtual_ip
            if body.vrrp_virtual_ip is None
            else body.vrrp_virtual_ip or None,
        )
        await _check_subnets_free(session, merged.subnets, group.id)
        group.description, group.subnets = merged.description, merged.subnets
        group.snat, group.vrrp_virtual_ip = merged.snat, merged.vrrp_virtual_ip
        await _check_apps_inside(session, group)
        m.details = body.model_dump(exclude_none=True)
        return await connector_group_out(session, group)


@router.delete("/connector-groups/{name}", status_code=204, tags=["connector-groups"])
async def delete_connector_group(name: str, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "delete-connector-group", "connector-group") as m:
        session = m.tx.session
        group = await by_name(session, ConnectorGroup, name, "connector group")
        m.object_id, m.details = group.id, {"name": name}
        users = [
            c
            for c in await session.scalars(
                select(Connector.name).where(Connector.connector_group_id == group.id)
            )
        ]
        apps = [
            a
            for a in await session.scalars(
                select(Application.name).where(Application.connector_group_id == group.id)
            )
        ]
        if users or apps:
            raise Conflict(
                f"connector group {name!r} is still used by "
                + "; ".join(
                    x
                    for x in (
                        f"connectors: {', '.join(users)}" if users else "",
                        f"applications: {', '.join(apps)}" if apps else "",
                    )
                    if x
                )
            )
        await session.delete(group)


# ----------------------------------------------------------------- connector tunnels

# Connectors report every 5 s: a report older than this says nothing about the tunnel now.
REPORT_FRESH_FOR = timedelta(seconds=30)
_CHECK_DAEMON = "check that 'zerogate connector run' is running on it and reaches the controller"
_CHECK_UDP = (
    "no WireGuard handshake with the gateway: check that UDP to the gateway's port range gets through"
)


class ConnectorTunnel(TypedDict):
    tunnel: Literal["up", "down", "unknown"]
    last_handshake_at: datetime | None
    tunnel_hint: str | None


def connector_tunnel(raw_report: str | None, now: datetime) -> ConnectorTunnel:
    """The tunnel as the connector's latest report (raw column text) tells it.

    The report passed the bounded schema in reports.py (hint: no control
    characters, at most MAX_HINT; handshake time: strict ISO 8601 UTC), and is
    parsed again here, so a report written around the API is never shown raw.
    """
    stored, problem = read_stored(raw_report)
    if stored is None:
        why = "its last report is unreadable" if problem else "it has not reported yet"
        return {"tunnel": "unknown", "last_handshake_at": None, "tunnel_hint": f"{why}: {_CHECK_DAEMON}"}
    handshake = _last_handshake(stored)
    at = stored.at if stored.at.tzinfo else stored.at.replace(tzinfo=UTC)  # written around the API
    age = now - at
    if age > REPORT_FRESH_FOR:
        hint = f"no report for {age.total_seconds():.0f} s: {_CHECK_DAEMON}"
        return {"tunnel": "unknown", "last_handshake_at": handshake, "tunnel_hint": hint}
    up = stored.details.tunnel_up
    if up is None:
        return {"tunnel": "unknown", "last_handshake_at": handshake, "tunnel_hint": None}
    if up:
        return {"tunnel": "up", "last_handshake_at": handshake, "tunnel_hint": None}
    return {
        "tunnel": "down",
        "last_handshake_at": handshake,
        "tunnel_hint": stored.details.tunnel_hint or _CHECK_UDP,
    }


async def connector_reports(session: AsyncSession, device_id: int | None = None) -> dict[int, str | None]:
    """Connector devices' stored reports as raw text (parsed by :func:`connector_tunnel`)."""
    query = select(Device.id, cast(Device.report, Text)).where(Device.role == "connector")
    if device_id is not None:
        query = query.where(Device.id == device_id)
    return {i: raw for i, raw in (await session.execute(query)).tuples()}


def _last_handshake(report: StoredReport) -> datetime | None:
    """The connector's own last_handshake_at, else (older connectors) its gateway peer's."""
    if report.details.last_handshake_at is not None:
        return datetime.fromisoformat(report.details.last_handshake_at)
    latest = max((p.latest_handshake for p in report.peers if p.role == "gateway"), default=0)
    return datetime.fromtimestamp(latest, UTC) if 0 < latest < 2**40 else None


# ----------------------------------------------------------------- gateways


def gateway_out(g: Gateway) -> s.GatewayOut:
    return s.GatewayOut(
        id=g.id,
        name=g.name,
        description=g.description,
        public_endpoint=g.public_endpoint,
        port_first=g.port_first,
        port_last=g.port_last,
        device_id=g.device_id,
        status=g.device.status if g.device else "not enrolled",
        last_seen_at=g.device.last_seen_at if g.device else None,
        created_at=g.created_at,
    )


@router.get("/gateways", response_model=list[s.GatewayOut], tags=["gateways"])
async def list_gateways(admin: Admin, state: State) -> list[s.GatewayOut]:
    async with state.db.read() as session:
        return [gateway_out(g) for g in await session.scalars(select(Gateway).order_by(Gateway.name))]


@router.post("/gateways", response_model=s.GatewayOut, status_code=201, tags=["gateways"])
async def create_gateway(body: s.GatewayCreate, admin: Admin, state: State) -> s.GatewayOut:
    async with state.mutation(admin, "create-gateway", "gateway") as m:
        await ensure_free(m.tx.session, Gateway, body.name, "gateway")
        gw = Gateway(**body.model_dump(), created_at=utcnow())
        m.tx.session.add(gw)
        await m.tx.session.flush()
        m.object_id, m.details = gw.id, body.model_dump()
        return gateway_out(gw)


@router.get("/gateways/{name}", response_model=s.GatewayOut, tags=["gateways"])
async def show_gateway(name: str, admin: Admin, state: State) -> s.GatewayOut:
    async with state.db.read() as session:
        return gateway_out(await by_name(session, Gateway, name, "gateway"))


@router.patch("/gateways/{name}", response_model=s.GatewayOut, tags=["gateways"])
async def update_gateway(name: str, body: s.GatewayUpdate, admin: Admin, state: State) -> s.GatewayOut:
    async with state.mutation(admin, "update-gateway", "gateway") as m:
        gw = await by_name(m.tx.session, Gateway, name, "gateway")
        m.object_id = gw.id
        merged = s.GatewayCreate(
            name=gw.name,
            description=gw.description if body.description is None else body.description,
            public_endpoint=gw.public_endpoint if body.public_endpoint is None else body.public_endpoint,
            port_first=gw.port_first if body.port_first is None else body.port_first,
            port_last=gw.port_last if body.port_last is None else body.port_last,
        )
        gw.description, gw.public_endpoint = merged.description, merged.public_endpoint
        gw.port_first, gw.port_last = merged.port_first, merged.port_last
        m.details = body.model_dump(exclude_none=True)
        return gateway_out(gw)


@router.delete("/gateways/{name}", status_code=204, tags=["gateways"])
async def delete_gateway(name: str, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "delete-gateway", "gateway") as m:
        gw = await by_name(m.tx.session, Gateway, name, "gateway")
        m.object_id, m.details = gw.id, {"name": name}
        if gw.device is not None:
            gw.device.status, gw.device.revoked_at = "revoked", utcnow()
        await m.tx.session.delete(gw)


# ----------------------------------------------------------------- applications


def application_out(a: Application, group_name: str) -> s.ApplicationOut:
    return s.ApplicationOut(
        id=a.id,
        name=a.name,
        description=a.description,
        connector_group=group_name,
        destinations=a.destinations,
        created_at=a.created_at,
    )


async def _app_out(session: AsyncSession, a: Application) -> s.ApplicationOut:
    group = await session.get(ConnectorGroup, a.connector_group_id)
    return application_out(a, group.name if group else "")


@router.get("/applications", response_model=list[s.ApplicationOut], tags=["applications"])
async def list_applications(admin: Admin, state: State) -> list[s.ApplicationOut]:
    async with state.db.read() as session:
        groups = {g.id: g.name for g in await session.scalars(select(ConnectorGroup))}
        rows = await session.scalars(select(Application).order_by(Application.name))
        return [application_out(a, groups.get(a.connector_group_id, "")) for a in rows]


@router.post("/applications", response_model=s.ApplicationOut, status_code=201, tags=["applications"])
async def create_application(body: s.ApplicationCreate, admin: Admin, state: State) -> s.ApplicationOut:
    async with state.mutation(admin, "create-application", "application") as m:
        session = m.tx.session
        await ensure_free(session, Application, body.name, "application")
        group = await by_name(session, ConnectorGroup, body.connector_group, "connector group")
        destinations = [d.model_dump() for d in body.destinations]
        _destinations_inside(body.name, destinations, group)
        app = Application(
            name=body.name,
            description=body.description,
            connector_group_id=group.id,
            destinations=destinations,
            created_at=utcnow(),
        )
        session.add(app)
        await session.flush()
        m.object_id, m.details = app.id, body.model_dump()
        return application_out(app, group.name)


@router.get("/applications/{name}", response_model=s.ApplicationOut, tags=["applications"])
async def show_application(name: str, admin: Admin, state: State) -> s.ApplicationOut:
    async with state.db.read() as session:
        return await _app_out(session, await by_name(session, Application, name, "application"))


@router.patch("/applications/{name}", response_model=s.ApplicationOut, tags=["applications"])
async def update_application(
    name: str, body: s.ApplicationUpdate, admin: Admin, state: State
) -> s.ApplicationOut:
    async with state.mutation(admin, "update-application", "application") as m:
        session = m.tx.session
        app = await by_name(session, Application, name, "application")
        m.object_id = app.id
        if body.description is not None:
            app.description = body.description
        group = (
            await by_name(session, ConnectorGroup, body.connector_group, "connector group")
            if body.connector_group is not None
            else await session.get(ConnectorGroup, app.connector_group_id)
        )
        assert group is not None
        destinations = (
            app.destinations if body.destinations is None else [d.model_dump() for d in body.destinations]
        )
        _destinations_inside(app.name, destinations, group)
        app.connector_group_id, app.destinations = group.id, destinations
        m.details = body.model_dump(exclude_none=True)
        return application_out(app, group.name)


@router.delete("/applications/{name}", status_code=204, tags=["applications"])
async def delete_application(name: str, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "delete-application", "application") as m:
        app = await by_name(m.tx.session, Application, name, "application")
        m.object_id, m.details = app.id, {"name": name}
        used = [
            p.name
            for p in await m.tx.session.scalars(select(Policy).where(Policy.applications.contains(app)))
        ]
        if used:
            raise Conflict(f"application {name!r} is used by policies: {', '.join(used)}")
        await m.tx.session.delete(app)


# ----------------------------------------------------------------- policies


def policy_out(p: Policy) -> s.PolicyOut:
    return s.PolicyOut(
        id=p.id,
        name=p.name,
        description=p.description,
        groups=sorted(g.name for g in p.groups),
        applications=sorted(a.name for a in p.applications),
        require_mfa=p.require_mfa,
        time_window=p.time_window,
        enabled=p.enabled,
        created_at=p.created_at,
    )


@router.get("/policies", response_model=list[s.PolicyOut], tags=["policies"])
async def list_policies(admin: Admin, state: State) -> list[s.PolicyOut]:
    async with state.db.read() as session:
        return [policy_out(p) for p in await session.scalars(select(Policy).order_by(Policy.name))]


@router.post("/policies", response_model=s.PolicyOut, status_code=201, tags=["policies"])
async def create_policy(body: s.PolicyCreate, admin: Admin, state: State) -> s.PolicyOut:
    async with state.mutation(admin, "create-policy", "policy") as m:
        session = m.tx.session
        await ensure_free(session, Policy, body.name, "policy")
        policy = Policy(
            name=body.name,
            description=body.description,
            enabled=body.enabled,
            require_mfa=body.require_mfa,
            time_window=body.time_window.as_json() if body.time_window else None,
            groups=await all_by_name(session, Group, body.groups, "group"),
            applications=await all_by_name(session, Application, body.applications, "application"),
            created_at=utcnow(),
        )
        session.add(policy)
        await session.flush()
        m.object_id, m.details = policy.id, body.model_dump(mode="json")
        return policy_out(policy)


@router.get("/policies/{name}", response_model=s.PolicyOut, tags=["policies"])
async def show_policy(name: str, admin: Admin, state: State) -> s.PolicyOut:
    async with state.db.read() as session:
        return policy_out(await by_name(session, Policy, name, "policy"))


@router.patch("/policies/{name}", response_model=s.PolicyOut, tags=["policies"])
async def update_policy(name: str, body: s.PolicyUpdate, admin: Admin, state: State) -> s.PolicyOut:
    async with state.mutation(admin, "update-policy", "policy") as m:
        session = m.tx.session
        policy = await by_name(session, Policy, name, "policy")
        m.object_id = policy.id
        if body.description is not None:
            policy.description = body.description
        if body.groups is not None:
            policy.groups = await all_by_name(session, Group, body.groups, "group")
        if body.applications is not None:
            policy.applications = await all_by_name(session, Application, body.applications, "application")
        if body.require_mfa is not None:
            policy.require_mfa = body.require_mfa
        if body.enabled is not None:
            policy.enabled = body.enabled
        if body.clear_time_window:
            policy.time_window = None
        elif body.time_window is not None:
            policy.time_window = body.time_window.as_json()
        m.details = body.model_dump(mode="json", exclude_none=True)
        return policy_out(policy)


@router.delete("/policies/{name}", status_code=204, tags=["policies"])
async def delete_policy(name: str, admin: Admin, state: State) -> None:
    async with state.mutation(admin, "delete-policy", "policy") as m:
        policy = await by_name(m.tx.session, Policy, name, "policy")
        m.object_id, m.details = policy.id, {"name": name}
        await m.tx.session.delete(policy)


@router.post("/policy/explain", response_model=s.ExplainResponse, tags=["policies"])
async def explain(body: s.ExplainRequest, admin: Admin, state: State) -> s.ExplainResponse:
    """Would this user reach this destination, and which policy decides it?"""
    async with state.db.read() as session:
        user = await by_name(session, Account, body.username, "user")
        if user.kind != "user":
            raise NotFound(
                f"no user named {body.username!r} ({body.username} is an admin; admins reach no applications)"
            )
        if user.status == "pending":
            return s.ExplainResponse(
                allowed=False, policy=None, reason=f"user {user.username!r} has not activated the account yet"
            )
        inputs = await load_policy_inputs(session)
    decision = explain_policy(
        inputs,
        user_id=user.id,
        destination=ip_address(body.destination),
        protocol=body.protocol,
        port=body.port,
        now=utcnow(),
        mfa=body.mfa,
    )
    return s.ExplainResponse(allowed=decision.allowed, policy=decision.policy_name, reason=decision.reason)


# ----------------------------------------------------------------- address pool


async def _pool_out(session: AsyncSession, pool: AddressPoolRow) -> s.AddressPoolOut:
    allocated = await session.scalar(
        select(func.count()).select_from(Device).where(Device.address.is_not(None))
    )
    return s.AddressPoolOut(name=pool.name, blocks=pool.blocks, allocated=int(allocated or 0))


async def default_pool(session: AsyncSession) -> AddressPoolRow:
    pool = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    if pool is None:
        raise NotFound("the default client address pool is missing; run 'zerogate controller init'")
    return pool


@router.get("/address-pool", response_model=s.AddressPoolOut, tags=["address-pool"])
async def show_pool(admin: Admin, state: State) -> s.AddressPoolOut:
    async with state.db.read() as session:
        return await _pool_out(session, await default_pool(session))


@router.put("/address-pool", response_model=s.AddressPoolOut, tags=["address-pool"])
async def update_pool(body: s.AddressPoolUpdate, admin: Admin, state: State) -> s.AddressPoolOut:
    async with state.mutation(admin, "update-address-pool", "address-pool") as m:
        session = m.tx.session
        pool = await default_pool(session)
        nets = [ip_network(b) for b in body.blocks]
        for group in await session.scalars(select(ConnectorGroup).order_by(ConnectorGroup.name)):
            for subnet in group.subnets:
                for block in body.blocks:
                    if s.overlapping(block, subnet):
                        raise Conflict(
                            f"block {block} overlaps subnet {subnet} of connector group {group.name!r}: "
                            "clients would get addresses of that site; choose blocks outside every "
                            "connector group's subnets"
                        )
        stranded = [
            d
            for d in await session.scalars(select(Device.address).where(Device.address.is_not(None)))
            if d is not None and not any(ip_address(d) in n for n in nets)
        ]
        if stranded:
            raise Conflict(
                f"{len(stranded)} device(s) (clients or connectors) hold addresses outside the new blocks "
                f"(e.g. {stranded[0]}); revoke them first"
            )
        pool.blocks = body.blocks
        m.object_id, m.details = pool.id, {"blocks": body.blocks}
        return await _pool_out(session, pool)


# ----------------------------------------------------------------- audit


@router.get("/audit", response_model=list[s.AuditOut], tags=["audit"])
async def list_audit(
    admin: Admin,
    state: State,
    # Bounded to what an id column holds (PostgreSQL INTEGER): a larger number is
    # a 422, not a driver overflow and a 500.
    after_id: int = Query(0, ge=0, le=2**31 - 1),
    limit: int = Query(100, ge=1, le=1000),
    action: str | None = Query(None, max_length=64),
) -> list[s.AuditOut]:
    async with state.db.read() as session:
        q = select(AuditRecord).where(AuditRecord.id > after_id)
        if action:
            q = q.where(AuditRecord.action == action)
        rows = await session.scalars(q.order_by(AuditRecord.id).limit(limit))
        return [s.AuditOut.model_validate(r, from_attributes=True) for r in rows]


async def verify_audit_chain(state: ControllerState) -> s.AuditVerifyOut:
    return s.AuditVerifyOut.model_validate((await verify_audit_log(state.db)).as_json())


@router.get("/audit/verify", response_model=s.AuditVerifyOut, tags=["audit"])
async def verify_audit(admin: Admin, state: State) -> s.AuditVerifyOut:
    return await verify_audit_chain(state)
