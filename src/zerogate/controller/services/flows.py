"""Flow records: what the gateways forwarded or refused (schema 0008).

- :func:`ingest` takes one batch from a gateway (``POST /v1/flows``, a strict
  :class:`FlowBatch` of at most :data:`MAX_BATCH` records) and resolves, once,
  who and what each record is about: the client device and its user (from the
  device id the gateway's snapshot gave it, else from the tunnel address), the
  deciding policy's name and the application whose destinations hold the
  flow's destination, protocol and port. Stored as text, so a record outlives
  renames and deletions.
- :func:`records` lists with the admin's filters (user, application, since,
  denied), oldest first after a cursor (``after_id``), in bounded pages.
- :func:`prune` deletes records older than ``flow_retention_days`` in bounded
  batches; :func:`pruner` runs it in the background (started with the router).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import retention
from zerogate.controller.fields import AwareTime, IpAddress
from zerogate.controller.schemas.base import Strict
from zerogate.model.policy import PortRange
from zerogate.store.db import Database, utcnow
from zerogate.store.models import Account, Application, Device, Policy
from zerogate.store.models_flows import FlowRecordRow

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # records per POST (the gateway sends at most this many)
MAX_PAGE = 1000  # records per GET
PRUNE_BATCH = 5000
_COUNT = Annotated[int, Field(ge=0, le=2**62)]
_ID = Annotated[int, Field(ge=1, le=2**31 - 1)]
_PORT = Annotated[int, Field(ge=0, le=65535)]


class FlowIn(Strict):
    """One record as a gateway sends it (:mod:`zerogate.gateway.flow_rules`)."""

    start: AwareTime  # ISO 8601 text in JSON
    end: AwareTime
    client: IpAddress
    device_id: _ID | None = None
    protocol: Literal["tcp", "udp"]
    destination: IpAddress
    port: _PORT
    source_port: _PORT | None = None
    policy_id: _ID | None = None
    denied: Literal["no-policy"] | None = None
    packets_out: _COUNT = 0
    bytes_out: _COUNT = 0
    packets_in: _COUNT = 0
    bytes_in: _COUNT = 0

    @model_validator(mode="after")
    def _consistent(self) -> FlowIn:
        if self.end < self.start:
            raise ValueError("a flow cannot end before it starts")
        if (self.policy_id is None) == (self.denied is None):
            raise ValueError("a flow has either a deciding policy or a denial reason")
        return self


class FlowBatch(Strict):
    records: list[FlowIn] = Field(max_length=MAX_BATCH)
    dropped: _COUNT = 0  # records the gateway could not keep (queue full)
    lost_events: _COUNT = 0  # times the kernel dropped conntrack events
    skipped: _COUNT = 0  # event lines the gateway did not understand


@dataclass
class _Lookup:
    """Names resolved once per batch."""

    devices: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # id -> (name, user)
    by_address: dict[str, int] = field(default_factory=dict)
    policies: dict[int, tuple[str, list[Application]]] = field(default_factory=dict)
    applications: list[Application] = field(default_factory=list)


def _destination_holds(dest: dict[str, Any], address: str, protocol: str, port: int) -> bool:
    try:
        if ipaddress.ip_address(address) not in ipaddress.ip_network(
            str(dest.get("address", "")), strict=False
        ):
            return False
    except ValueError:
        return False
    if dest.get("protocol") not in (protocol, "any"):
        return False
    ports = dest.get("ports") or []
    return not ports or any(port in PortRange.parse(str(p)) for p in ports)


def application_of(apps: list[Application], address: str, protocol: str, port: int) -> str | None:
    """The first application (by name) whose destinations hold the flow's destination."""
    for app in sorted(apps, key=lambda a: a.name):
        if any(_destination_holds(d, address, protocol, port) for d in app.destinations):
            return app.name
    return None


async def _lookup(session: AsyncSession, batch: FlowBatch) -> _Lookup:
    found = _Lookup()
    ids = {r.device_id for r in batch.records if r.device_id is not None}
    addresses = {r.client for r in batch.records if r.device_id is None}
    query = (
        select(Device, Account.username)
        .outerjoin(Account, Device.account_id == Account.id)
        .where(Device.role == "client")
        .where(Device.id.in_(ids) | Device.address.in_(addresses))
    )
    for device, username in (await session.execute(query)).all():
        found.devices[device.id] = (device.name, username)
        if device.address:
            found.by_address[device.address] = device.id
    policy_ids = {r.policy_id for r in batch.records if r.policy_id is not None}
    if policy_ids:
        for policy in await session.scalars(select(Policy).where(Policy.id.in_(policy_ids))):
            found.policies[policy.id] = (policy.name, list(policy.applications))
    if any(r.denied for r in batch.records):
        found.applications = list(await session.scalars(select(Application)))
    return found


async def ingest(session: AsyncSession, gateway_id: int, batch: FlowBatch) -> list[FlowRecordRow]:
    """Store ``batch`` from gateway device ``gateway_id``; the rows (with their ids)."""
    if batch.dropped or batch.lost_events:
        log.warning(
            "gateway %d lost flow records: %d dropped (its queue was full), %d kernel event overflows",
            gateway_id,
            batch.dropped,
            batch.lost_events,
        )
    if not batch.records:
        return []
    found = await _lookup(session, batch)
    now = utcnow()
    rows = []
    for r in batch.records:
        device_id = r.device_id if r.device_id in found.devices else found.by_address.get(r.client)
        name, user = found.devices.get(device_id, (None, None)) if device_id is not None else (None, None)
        policy, apps = found.policies.get(r.policy_id, (None, [])) if r.policy_id else (None, [])
        candidates = apps if r.policy_id else found.applications
        rows.append(
            FlowRecordRow(
                gateway_id=gateway_id,
                started_at=r.start,
                ended_at=r.end,
                received_at=now,
                client_address=r.client,
                device_id=device_id,
                device_name=name,
                user=user,
                protocol=r.protocol,
                destination=r.destination,
                port=r.port,
                source_port=r.source_port,
                policy_id=r.policy_id,
                policy=policy,
                application=application_of(candidates, r.destination, r.protocol, r.port),
                denied=r.denied,
                packets_out=r.packets_out,
                bytes_out=r.bytes_out,
                packets_in=r.packets_in,
                bytes_in=r.bytes_in,
            )
        )
    session.add_all(rows)
    await session.flush()
    return rows


def as_json(row: FlowRecordRow) -> dict[str, Any]:
    """A record as the API, the CLI's JSON lines and the syslog export show it."""
    return {
        "id": row.id,
        "start": row.started_at.isoformat(),
        "end": row.ended_at.isoformat(),
        "duration": round((row.ended_at - row.started_at).total_seconds(), 3),
        "user": row.user,
        "device_id": row.device_id,
        "device": row.device_name,
        "client": row.client_address,
        "protocol": row.protocol,
        "destination": row.destination,
        "port": row.port,
        "source_port": row.source_port,
        "application": row.application,
        "policy_id": row.policy_id,
        "policy": row.policy,
        "denied": row.denied,
        "bytes_out": row.bytes_out,
        "bytes_in": row.bytes_in,
        "packets_out": row.packets_out,
        "packets_in": row.packets_in,
        "gateway_id": row.gateway_id,
    }


async def records(
    session: AsyncSession,
    *,
    user: str | None = None,
    app: str | None = None,
    since: datetime | None = None,
    denied: bool | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[FlowRecordRow]:
    query = select(FlowRecordRow).where(FlowRecordRow.id > after_id)
    if user is not None:
        query = query.where(FlowRecordRow.user == user)
    if app is not None:
        query = query.where(FlowRecordRow.application == app)
    if since is not None:
        query = query.where(FlowRecordRow.started_at >= since)
    if denied is not None:
        query = query.where(FlowRecordRow.denied.is_not(None) if denied else FlowRecordRow.denied.is_(None))
    query = query.order_by(FlowRecordRow.id).limit(min(max(limit, 1), MAX_PAGE))
    return list(await session.scalars(query))


async def prune(db: Database, before: datetime, batch: int = PRUNE_BATCH) -> int:
    """Delete flow records older than ``before``, ``batch`` rows per transaction; how many."""
    return await retention.delete_older(db, FlowRecordRow.id, FlowRecordRow.started_at, before, batch)


def pruner(db: Database, days: float) -> retention.Pruner:
    """The background deletion of flow records older than ``days`` (started with the router)."""
    return retention.Pruner(db, "flow records", FlowRecordRow.id, FlowRecordRow.started_at, days, PRUNE_BATCH)
