"""A segment server's report, stored: per asset its state, host key, preflight,
sshd ports, enforced revision and learned flows; and the directory's
monitored computers.

Only assets of the reporting server are touched; an id of another server's
asset or of none is ignored (and listed in the answer). A host that offers
another key than the pinned one goes to state ``host_key_changed`` and its
key stays pinned: management stays stopped until an admin trusts the new key.
Flows merge into the asset's records (:func:`zerogate.policy.segment.merge`)
up to a limit per asset; the excess is refused and counted on the asset. The
server's event-loss counters (conntrack events it dropped, kernel overflows on
the host) are shown in the asset's detail.

With a directory, the server's directory-sourced assets follow the group:
new members become assets in mode monitored, members that left are removed,
unless they are enforcing (protected, learning with blocks) or their server
still reports a revision in force on the host (an unprotect it has not carried
out yet: removed now, the host would keep our table and the directory its
protected group entry): those stay, flagged, until an admin unprotects them and
the server reports the table gone. A plain learning window that ended
goes back to monitored. Each of these is audited, and changes the config
revision when it changes what a server is told.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.ids import row_id
from zerogate.controller.schemas import segment as ss
from zerogate.controller.services.membership import chunks
from zerogate.controller.services.segment import ENFORCING, fingerprint, learning_over
from zerogate.controller.services.segment_review import row_flow
from zerogate.model.segment import Flow, SegmentValueError
from zerogate.model.segment_report import AssetReport, DirectoryComputer, ObservedFlow, SegmentReport
from zerogate.policy.segment import DEFAULT_FLOW_LIMIT, merge
from zerogate.store.db import WriteTx, utcnow
from zerogate.store.models import SegmentAssetRow, SegmentFlowRow, SegmentServer


def _store_state(tx: WriteTx, asset: SegmentAssetRow, report: AssetReport, actor: str, now: datetime) -> None:
    asset.reported_at = now
    asset.preflight = [p.model_dump(mode="json") for p in report.preflight]
    asset.ssh_ports = sorted(set(report.ssh_ports))
    asset.enforced_revision = report.enforced_revision
    offered = report.observed_host_key
    if offered is not None:
        asset.observed_host_key = offered
    if asset.host_key is not None and offered is not None and offered != asset.host_key:
        pinned_fp, offered_fp = fingerprint(asset.host_key), fingerprint(offered)
        if asset.state != "host_key_changed":
            tx.audit(
                actor=actor,
                action="segment-host-key-changed",
                object_type="segment-asset",
                object_id=asset.id,
                outcome="denied",
                details={"asset": asset.name, "pinned": pinned_fp, "offered": offered_fp},
            )
        asset.state = "host_key_changed"
        asset.detail = (
            f"the host offered another {'WinRM listener certificate' if asset.os == 'windows' else 'SSH host key'} "
            f"({offered_fp}) than the pinned one ({pinned_fp}): "
            "management stopped. Check the key on the host; if the change is expected: "
            f"zerogate admin segment asset trust {asset.name} {offered_fp}"
        )
        return
    asset.state, asset.detail = report.state, report.detail
    if asset.flows_refused:
        asset.detail = (
            f"{asset.detail}; " if asset.detail else ""
        ) + f"flow limit reached: {asset.flows_refused} new flow(s) refused"
    if report.events_dropped or report.event_overflows:
        asset.detail = (f"{asset.detail}; " if asset.detail else "") + (
            f"conntrack events lost: {report.events_dropped} dropped by the segment server (pending cap), "
            f"{report.event_overflows} kernel buffer overflow(s) on the host"
        )


def _flows(observed: Sequence[ObservedFlow]) -> list[Flow]:
    out = []
    for o in observed:
        try:
            out.append(o.flow())
        except SegmentValueError:
            continue  # e.g. last_seen before first_seen: not a flow we can keep
    return out


async def _merge_flows(
    session: AsyncSession, asset: SegmentAssetRow, observed: Sequence[ObservedFlow], limit: int
) -> int:
    """Fold the observed flows into the asset's records; returns how many new ones were refused.

    Only the records of the peers seen are read (an asset may hold ``limit``
    records and a report touch a few): the others only take up room.
    """
    flows = _flows(observed)
    peers = sorted({str(f.peer) for f in flows})
    rows: list[SegmentFlowRow] = []
    for part in chunks(peers):
        rows.extend(
            await session.scalars(
                select(SegmentFlowRow).where(
                    SegmentFlowRow.asset_id == asset.id, SegmentFlowRow.peer.in_(part)
                )
            )
        )
    by_key = {row_flow(r).key: r for r in rows}
    stored = int(
        await session.scalar(
            select(func.count()).select_from(SegmentFlowRow).where(SegmentFlowRow.asset_id == asset.id)
        )
        or 0
    )
    room = limit - (stored - len(rows))  # what the records read here may grow to
    if room < 1:  # full without them: known flows cannot be among these peers' either
        dropped = len({f.key for f in flows})
    else:
        result = merge([row_flow(r) for r in rows], flows, limit=room)
        dropped = result.dropped
        for flow in result.flows:
            _store_flow(session, asset, by_key.get(flow.key), flow)
    if dropped:
        asset.flows_refused += dropped
    return dropped


def _store_flow(
    session: AsyncSession, asset: SegmentAssetRow, row: SegmentFlowRow | None, flow: Flow
) -> None:
    if row is None:
        session.add(
            SegmentFlowRow(
                asset_id=asset.id,
                direction=flow.direction,
                protocol=flow.protocol,
                port=flow.port,
                peer=str(flow.peer),
                process=flow.process or "",
                first_seen=flow.first_seen,
                last_seen=flow.last_seen,
                count=flow.count,
            )
        )
    elif (row.first_seen, row.last_seen, row.count) != (flow.first_seen, flow.last_seen, flow.count):
        row.first_seen, row.last_seen, row.count = flow.first_seen, flow.last_seen, flow.count


async def _by_name(session: AsyncSession, names: list[str]) -> dict[str, SegmentAssetRow]:
    found: dict[str, SegmentAssetRow] = {}
    for part in chunks(names):
        found.update(
            (a.name, a)
            for a in await session.scalars(select(SegmentAssetRow).where(SegmentAssetRow.name.in_(part)))
        )
    return found


async def _follow_directory(
    tx: WriteTx,
    server: SegmentServer,
    computers: Sequence[DirectoryComputer],
    actor: str,
    result: ss.SegmentReportResult,
) -> bool:
    """Directory-sourced assets of ``server`` follow the group; returns whether a snapshot changes."""
    session = tx.session
    members = {c.name: c for c in computers if c.address is not None}
    known = await _by_name(session, list(members))
    changed = False
    now = utcnow()
    for name, computer in members.items():
        row = known.get(name)
        address = str(computer.address)
        if row is None:
            row = SegmentAssetRow(
                name=name,
                address=address,
                server_id=server.id,
                source="directory",
                directory_dn=computer.dn,
                created_at=now,
            )
            session.add(row)
            await session.flush()
            tx.audit(
                actor=actor,
                action="segment-asset-joined",
                object_type="segment-asset",
                object_id=row.id,
                details={"asset": name, "dn": computer.dn, "address": address},
            )
            result.created.append(name)
            changed = True
        elif row.source == "directory" and row.server_id == server.id:
            row.directory_dn, row.left_directory = computer.dn, False
            if row.address != address:
                tx.audit(
                    actor=actor,
                    action="segment-asset-moved",
                    object_type="segment-asset",
                    object_id=row.id,
                    details={"asset": name, "from": row.address, "to": address},
                )
                row.address = address
                row.rules_revision += 1
                changed = True
    mine = await session.scalars(
        select(SegmentAssetRow).where(
            SegmentAssetRow.server_id == server.id, SegmentAssetRow.source == "directory"
        )
    )
    for row in list(mine):
        if row.name in members:
            continue
        if row.mode in ENFORCING or row.enforced_revision is not None:
            if not row.left_directory:
                row.left_directory = True
                tx.audit(
                    actor=actor,
                    action="segment-asset-left-directory",
                    object_type="segment-asset",
                    object_id=row.id,
                    details={"asset": row.name, "mode": row.mode, "kept": True},
                )
            result.kept.append(row.name)
            continue
        tx.audit(
            actor=actor,
            action="segment-asset-removed",
            object_type="segment-asset",
            object_id=row.id,
            details={"asset": row.name, "reason": "left the directory group"},
        )
        await session.delete(row)
        result.removed.append(row.name)
        changed = True
    return changed


async def _end_learning(tx: WriteTx, server: SegmentServer, actor: str) -> bool:
    now = utcnow()
    ended = False
    learning = await tx.session.scalars(
        select(SegmentAssetRow).where(
            SegmentAssetRow.server_id == server.id, SegmentAssetRow.mode == "learning"
        )
    )
    for row in list(learning):
        if learning_over(row, now):
            row.mode = "monitored"
            row.rules_revision += 1
            tx.audit(
                actor=actor,
                action="segment-learning-ended",
                object_type="segment-asset",
                object_id=row.id,
                details={
                    "asset": row.name,
                    "until": row.learning_until.isoformat() if row.learning_until else "",
                },
            )
            ended = True
    return ended


async def ingest(
    tx: WriteTx,
    server: SegmentServer,
    report: SegmentReport,
    *,
    actor: str,
    flow_limit: int = DEFAULT_FLOW_LIMIT,
) -> ss.SegmentReportResult:
    """Store ``report`` from ``server`` (see the module docstring); bumps the revision when needed."""
    session = tx.session
    now = utcnow()
    wanted = list(dict.fromkeys(a.asset_id for a in report.assets))
    mine: dict[int, SegmentAssetRow] = {}
    for part in chunks([i for i in wanted if row_id(i) is not None]):
        mine.update(
            (a.id, a)
            for a in await session.scalars(
                select(SegmentAssetRow).where(
                    SegmentAssetRow.server_id == server.id, SegmentAssetRow.id.in_(part)
                )
            )
        )
    result = ss.SegmentReportResult(
        updated=0,
        ignored=[i for i in wanted if i not in mine],
        created=[],
        removed=[],
        kept=[],
        flows_refused=0,
    )
    for item in report.assets:
        asset = mine.get(item.asset_id)
        if asset is None:
            continue
        if item.flows:
            result.flows_refused += await _merge_flows(session, asset, item.flows, flow_limit)
        _store_state(tx, asset, item, actor, now)
        result.updated += 1
    changed = await _end_learning(tx, server, actor)
    if report.directory is not None:
        changed = await _follow_directory(tx, server, report.directory, actor, result) or changed
    if changed:
        tx.bump()
    return result
