"""``/v1/segment/...``: assets, their host keys and modes, learned flows, jump
hosts, and the segment server's report.

Admin routes are audited mutations (a refusal is recorded too); every change
to what a segment server must do gets a new config revision, so its snapshot
watch wakes. ``POST /v1/segment/report`` is for enrolled segment servers only
and is not itself audited (like ``/v1/report``); what it changes is
(:mod:`zerogate.controller.services.segment_report`). Rules and simulation:
:mod:`.segment_review`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.auth import Admin, SegmentCaller, State
from zerogate.controller.schemas import segment as ss
from zerogate.controller.services import devices, segment, segment_report
from zerogate.controller.services.segment_review import flow_rows
from zerogate.model.segment_report import SegmentReport
from zerogate.store.db import utcnow
from zerogate.store.models import SegmentAssetRow, SegmentFlowRow, SegmentRuleRow, SegmentServer

router = APIRouter(prefix="/v1/segment", tags=["segment"])


async def assets_out(session: AsyncSession, rows: Sequence[SegmentAssetRow]) -> list[ss.AssetOut]:
    """The rows as the API shows them (three queries for any number of rows)."""
    servers = {s.id: s.name for s in await session.scalars(select(SegmentServer))}
    flows = dict(
        (
            await session.execute(
                select(SegmentFlowRow.asset_id, func.count()).group_by(SegmentFlowRow.asset_id)
            )
        )
        .tuples()
        .all()
    )
    rules: dict[int, dict[str, int]] = {}
    for asset_id, status, count in (
        await session.execute(
            select(SegmentRuleRow.asset_id, SegmentRuleRow.status, func.count()).group_by(
                SegmentRuleRow.asset_id, SegmentRuleRow.status
            )
        )
    ).tuples():
        rules.setdefault(asset_id, {})[status] = count
    return [
        ss.AssetOut(
            id=a.id,
            name=a.name,
            address=a.address,
            os=a.os,
            ssh_port=a.ssh_port,
            ssh_user=a.ssh_user,
            server=servers.get(a.server_id, ""),
            source=a.source,
            directory_dn=a.directory_dn,
            left_directory=a.left_directory,
            host_key_fingerprint=segment.fingerprint(a.host_key),
            observed_host_key_fingerprint=segment.fingerprint(a.observed_host_key),
            mode=a.mode,
            rules_revision=a.rules_revision,
            learning_started_at=a.learning_started_at,
            learning_until=a.learning_until,
            state=a.state,
            detail=a.detail,
            reported_at=a.reported_at,
            enforced_revision=a.enforced_revision,
            preflight=a.preflight,
            ssh_ports=a.ssh_ports,
            flows=flows.get(a.id, 0),
            flows_refused=a.flows_refused,
            rules={k: rules.get(a.id, {}).get(k, 0) for k in ("proposed", "approved", "rejected")},
            created_at=a.created_at,
        )
        for a in rows
    ]


async def asset_out(session: AsyncSession, row: SegmentAssetRow) -> ss.AssetOut:
    await session.flush()
    return (await assets_out(session, [row]))[0]


@router.get("/assets", response_model=list[ss.AssetOut])
async def list_assets(admin: Admin, state: State) -> list[ss.AssetOut]:
    async with state.db.read() as session:
        return await assets_out(session, await segment.list_assets(session))


@router.post("/assets", response_model=ss.AssetOut, status_code=201)
async def add_asset(body: ss.AssetCreate, admin: Admin, state: State) -> ss.AssetOut:
    """Add a host by name and address; it starts in mode monitored, its host key not yet pinned."""
    async with state.mutation(admin, "create-segment-asset", "segment-asset") as m:
        row = await segment.add_asset(m.tx.session, body)
        m.object_id, m.details = row.id, body.model_dump(mode="json") | {"ssh_port": row.ssh_port}
        return await asset_out(m.tx.session, row)


@router.get("/assets/{name}", response_model=ss.AssetOut)
async def show_asset(name: str, admin: Admin, state: State) -> ss.AssetOut:
    async with state.db.read() as session:
        return await asset_out(session, await segment.find_asset(session, name))


@router.delete("/assets/{name}", status_code=204)
async def remove_asset(name: str, admin: Admin, state: State) -> None:
    """Forget a host (its flows and rules too); refused while it is enforcing: unprotect it first."""
    async with state.mutation(admin, "delete-segment-asset", "segment-asset") as m:
        row = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = row.id, {"asset": row.name, "mode": row.mode}
        await segment.remove_asset(m.tx.session, row)


@router.post("/assets/{name}/trust", response_model=ss.AssetOut)
async def trust_host_key(name: str, body: ss.TrustRequest, admin: Admin, state: State) -> ss.AssetOut:
    """Pin the host key the asset offered, after checking its fingerprint on the host
    (``ssh-keygen -lf``). The fingerprint must be that of the key it offered last."""
    async with state.mutation(admin, "segment-trust-host-key", "segment-asset") as m:
        row = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = row.id, {"asset": row.name, "fingerprint": body.fingerprint}
        previous, pinned = await segment.trust(m.tx.session, row, body.fingerprint)
        m.details |= {"previous": previous, "pinned": pinned}
        return await asset_out(m.tx.session, row)


@router.post("/assets/{name}/mode", response_model=ss.AssetOut)
async def set_mode(name: str, body: ss.ModeRequest, admin: Admin, state: State) -> ss.AssetOut:
    """Move the asset to another mode: learning (with a window), learning_with_blocks,
    protected (needs a pinned host key and an approved rule) or monitored."""
    async with state.mutation(admin, "segment-set-mode", "segment-asset") as m:
        row = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = (
            row.id,
            {"asset": row.name, "to": body.mode, "window_seconds": body.window_seconds},
        )
        m.details["from"] = await segment.set_mode(m.tx.session, row, body.mode, body.window_seconds)
        m.details["rules_revision"] = row.rules_revision
        return await asset_out(m.tx.session, row)


@router.post("/assets/{name}/unprotect", response_model=ss.AssetOut)
async def unprotect(name: str, admin: Admin, state: State) -> ss.AssetOut:
    """Back to monitored from any mode: the server removes our table from the host."""
    async with state.mutation(admin, "segment-unprotect", "segment-asset") as m:
        row = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = row.id, {"asset": row.name}
        m.details["from"] = segment.unprotect(row)
        m.config_change = m.details["from"] != "monitored"
        return await asset_out(m.tx.session, row)


@router.post("/assets/{name}/extend", response_model=ss.AssetOut)
async def extend(name: str, body: ss.ExtendRequest, admin: Admin, state: State) -> ss.AssetOut:
    """Make the learning window longer."""
    async with state.mutation(admin, "segment-extend-learning", "segment-asset") as m:
        row = await segment.find_asset(m.tx.session, name)
        m.object_id, m.details = row.id, {"asset": row.name, "seconds": body.seconds}
        m.details["until"] = segment.extend(row, body.seconds).isoformat()
        m.config_change = False
        return await asset_out(m.tx.session, row)


@router.get("/assets/{name}/flows", response_model=list[ss.FlowOut])
async def flows(name: str, admin: Admin, state: State) -> list[ss.FlowOut]:
    """The flows learned on the asset."""
    async with state.db.read() as session:
        row = await segment.find_asset(session, name)
        return [
            ss.FlowOut(
                direction=f.direction,
                protocol=f.protocol,
                port=f.port,
                peer=f.peer,
                process=f.process or None,
                first_seen=f.first_seen,
                last_seen=f.last_seen,
                count=f.count,
            )
            for f in await flow_rows(session, row)
        ]


@router.get("/jump-hosts", response_model=ss.JumpHostsOut)
async def get_jump_hosts(admin: Admin, state: State) -> ss.JumpHostsOut:
    """Networks SSH may come from besides the segment server, on every protected host."""
    async with state.db.read() as session:
        return ss.JumpHostsOut(jump_hosts=await segment.jump_hosts(session))


@router.put("/jump-hosts", response_model=ss.JumpHostsOut)
async def set_jump_hosts(body: ss.JumpHosts, admin: Admin, state: State) -> ss.JumpHostsOut:
    """Replace the jump-host list (every enforcing asset gets a new rules revision)."""
    async with state.mutation(admin, "segment-set-jump-hosts", "segment-jump-hosts") as m:
        m.details = {"jump_hosts": body.jump_hosts}
        return ss.JumpHostsOut(jump_hosts=await segment.set_jump_hosts(m.tx.session, body.jump_hosts))


@router.post("/report", response_model=ss.SegmentReportResult)
async def report(body: SegmentReport, who: SegmentCaller, state: State) -> ss.SegmentReportResult:
    """A segment server's observations: per asset its state, host key, preflight and
    learned flows; and the directory's monitored computers. Ids of assets this
    server does not manage are ignored and listed in ``ignored``."""
    async with state.db.write() as tx:
        device = await devices.active_device(tx.session, who.id, with_report=False)
        server = await segment.server_of_device(tx.session, who.id)
        result = await segment_report.ingest(tx, server, body, actor=who.actor)
        device.last_seen_at = utcnow()
    return result
