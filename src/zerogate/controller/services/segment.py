"""Segment inventory and modes: segment servers, assets, host keys, modes, jump
hosts, and the snapshot a segment server follows.

- A segment server is a named object like a gateway; its host enrolls with a
  provisioning key made for it (:mod:`.provisioning_keys`, :mod:`.enrollment`).
- An asset belongs to one server. Its SSH host key is pinned only by an admin
  who checked the fingerprint (:func:`trust`): the key must be the one the
  host last offered. A changed key is never adopted by a report
  (:mod:`.segment_report`): management stops until an admin trusts it.
- Modes follow :data:`zerogate.model.segment.TRANSITIONS`; protect needs a
  pinned key and at least one approved rule; unprotect is always allowed.
  Every mode change, approved-rule change and jump-host change bumps the
  asset's ``rules_revision`` (the server enforces each revision once).

Rules and learned flows: :mod:`.segment_review`; report ingest:
:mod:`.segment_report`. Errors are the :mod:`zerogate.controller.state` ones.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from ipaddress import ip_address, ip_network

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.schemas import segment as ss
from zerogate.controller.services.lookup import by_name, ensure_free
from zerogate.controller.services.segment_jit import active_openings
from zerogate.controller.state import Conflict, NotFound, Unprocessable
from zerogate.model.segment import AssetMode, SegmentValueError, check_transition
from zerogate.model.snapshot import SegmentAsset, SegmentRule, SegmentSnapshot
from zerogate.store.db import utcnow
from zerogate.store.models import (
    Device,
    SegmentAssetRow,
    SegmentJumpHost,
    SegmentRuleRow,
    SegmentServer,
)

# On the Windows host: the SHA-256 of the WinRM HTTPS listener's certificate, as trusted here
WINDOWS_CHECK = (
    "[Convert]::ToBase64String([Security.Cryptography.SHA256]::Create().ComputeHash("
    "(Get-Item Cert:\\LocalMachine\\My\\<listener thumbprint>).RawData)) (the SHA256: part, without =)"
)
ENFORCING = (AssetMode.PROTECTED.value, AssetMode.LEARNING_WITH_BLOCKS.value)
LEARNING = (AssetMode.LEARNING.value, AssetMode.LEARNING_WITH_BLOCKS.value)


def fingerprint(host_key: str | None) -> str | None:
    """``SHA256:<base64>`` of an OpenSSH public key line, as ``ssh-keygen -lf`` prints it; of a
    Windows asset's ``x509-sha256 <base64>`` pin, that SHA-256 of the listener certificate."""
    if host_key is None:
        return None
    parts = host_key.split()
    if parts[0] == "x509-sha256" and len(parts) == 2:
        return "SHA256:" + parts[1].rstrip("=")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, binascii.Error):
        return "SHA256:(unreadable key)"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# --------------------------------------------------------------------------- servers


async def list_servers(session: AsyncSession) -> Sequence[SegmentServer]:
    return (await session.scalars(select(SegmentServer).order_by(SegmentServer.name))).all()


async def asset_count(session: AsyncSession, server: SegmentServer) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(SegmentAssetRow).where(SegmentAssetRow.server_id == server.id)
        )
        or 0
    )


async def create_server(session: AsyncSession, body: ss.SegmentServerCreate) -> SegmentServer:
    await ensure_free(session, SegmentServer, body.name, "segment server")
    server = SegmentServer(name=body.name, description=body.description, created_at=utcnow())
    session.add(server)
    await session.flush()
    return server


async def delete_server(session: AsyncSession, server: SegmentServer) -> None:
    """Remove the server and revoke its device; Conflict while it still manages assets."""
    count = await asset_count(session, server)
    if count:
        raise Conflict(f"segment server {server.name!r} still manages {count} asset(s); remove them first")
    if server.device is not None:
        server.device.status, server.device.revoked_at = "revoked", utcnow()
    await session.delete(server)


async def server_of_device(session: AsyncSession, device_id: int) -> SegmentServer:
    """The segment server an enrolled device runs; NotFound when it was deleted."""
    server = await session.scalar(select(SegmentServer).where(SegmentServer.device_id == device_id))
    if server is None:
        raise NotFound("this segment server was removed")
    return server


# --------------------------------------------------------------------------- assets


async def find_asset(session: AsyncSession, name: str) -> SegmentAssetRow:
    row = await session.scalar(select(SegmentAssetRow).where(SegmentAssetRow.name == name))
    if row is None:
        raise NotFound("no asset with that name")
    return row


async def list_assets(session: AsyncSession) -> Sequence[SegmentAssetRow]:
    return (await session.scalars(select(SegmentAssetRow).order_by(SegmentAssetRow.name))).all()


async def add_asset(session: AsyncSession, body: ss.AssetCreate) -> SegmentAssetRow:
    """A static asset in mode monitored; Conflict for a name in use, NotFound for an unknown server."""
    server = await by_name(session, SegmentServer, body.server, "segment server")
    if await session.scalar(
        select(func.count()).select_from(SegmentAssetRow).where(SegmentAssetRow.name == body.name)
    ):
        raise Conflict("an asset with that name already exists")
    row = SegmentAssetRow(
        name=body.name,
        address=body.address,
        os=body.os,
        ssh_port=body.port,
        ssh_user=body.ssh_user,
        server_id=server.id,
        source="static",
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row


async def remove_asset(session: AsyncSession, asset: SegmentAssetRow) -> None:
    """Forget the asset (its flows and rules go with it); Conflict while it is enforcing."""
    if asset.mode in ENFORCING:
        raise Conflict(
            f"asset {asset.name} is in mode {asset.mode}: unprotect it first, so its host is left without our rules"
        )
    await session.delete(asset)


async def trust(session: AsyncSession, asset: SegmentAssetRow, given: str) -> tuple[str | None, str]:
    """Pin the key the host last offered, if ``given`` is its fingerprint.

    Returns (previous fingerprint, new fingerprint). Unprocessable when the
    host offered no key yet or the fingerprint is another key's.
    """
    offered = fingerprint(asset.observed_host_key)
    if asset.observed_host_key is None or offered is None:
        raise Unprocessable(
            f"asset {asset.name} has not offered a host key yet: wait for its segment server to reach it"
        )
    if (asset.os == "windows") != asset.observed_host_key.startswith("x509-sha256 "):
        # the snapshot could not carry it: an SSH key is no WinRM pin and the other way round
        raise Unprocessable(
            f"asset {asset.name} offered a key of the wrong kind for a {asset.os} asset; "
            "if its os is wrong, remove the asset and add it again with the right --os"
        )
    if given != offered:
        check = WINDOWS_CHECK if asset.os == "windows" else "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
        raise Unprocessable(
            f"that fingerprint is not the key asset {asset.name} offered ({offered}); "
            f"check it on the host with: {check}"
        )
    previous = fingerprint(asset.host_key)
    if asset.host_key != asset.observed_host_key:
        asset.host_key = asset.observed_host_key
        asset.rules_revision += 1
        if asset.state in ("host_key_changed", "host_key_unknown"):
            asset.state, asset.detail = "trusted", "host key pinned; waiting for the next report"
    return previous, offered


# --------------------------------------------------------------------------- modes


async def approved_accepts(session: AsyncSession, asset: SegmentAssetRow) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(SegmentRuleRow)
            .where(
                SegmentRuleRow.asset_id == asset.id,
                SegmentRuleRow.status == "approved",
                SegmentRuleRow.action == "accept",
            )
        )
        or 0
    )


async def set_mode(
    session: AsyncSession, asset: SegmentAssetRow, target: str, window_seconds: int | None = None
) -> str:
    """Move the asset to mode ``target``; returns the mode it left.

    The learning modes need a window (and restart it); protected needs a
    pinned host key and an approved accept rule. Unprocessable otherwise.
    """
    current = AssetMode(asset.mode)
    wanted = AssetMode(target)
    if wanted == current:
        raise Unprocessable(f"asset {asset.name} is already in mode {current}")
    try:
        check_transition(current, wanted)
    except SegmentValueError as exc:
        raise Unprocessable(str(exc)) from None
    if wanted.value in LEARNING:
        # Between the two learning modes the window carries over; otherwise it is new.
        if window_seconds is None and current.value not in LEARNING:
            raise Unprocessable("a learning mode needs a window: window_seconds (e.g. 7 days: 604800)")
    elif window_seconds is not None:
        raise Unprocessable("window_seconds is only for the learning modes")
    if wanted == AssetMode.PROTECTED:
        if asset.host_key is None:
            raise Unprocessable(
                f"asset {asset.name} has no pinned host key: trust its key first "
                "(zerogate admin segment asset trust NAME FINGERPRINT)"
            )
        if not await approved_accepts(session, asset):
            raise Unprocessable(
                f"asset {asset.name} has no approved accept rule: protecting it would leave only "
                "management traffic; review and approve its rules first"
            )
    now = utcnow()
    if wanted.value in LEARNING and window_seconds is not None:
        asset.learning_started_at = now
        asset.learning_until = now + timedelta(seconds=window_seconds)
    asset.mode = wanted.value
    asset.rules_revision += 1
    return current.value


def unprotect(asset: SegmentAssetRow) -> str:
    """Back to monitored from any mode (removes our table on the host); returns the mode it left."""
    previous = asset.mode
    if previous != AssetMode.MONITORED.value:
        asset.mode = AssetMode.MONITORED.value
        asset.rules_revision += 1
    return previous


def extend(asset: SegmentAssetRow, seconds: int) -> datetime:
    """Push the end of the learning window back by ``seconds`` (from now if it had passed)."""
    if asset.mode not in LEARNING or asset.learning_until is None:
        raise Unprocessable(f"asset {asset.name} is not learning (mode {asset.mode}): start with learn")
    base = max(asset.learning_until, utcnow())
    asset.learning_until = base + timedelta(seconds=seconds)
    return asset.learning_until


def learning_over(asset: SegmentAssetRow, now: datetime) -> bool:
    """Whether the asset is in plain learning and its window has ended."""
    return (
        asset.mode == AssetMode.LEARNING.value
        and asset.learning_until is not None
        and asset.learning_until <= now
    )


# --------------------------------------------------------------------------- jump hosts


async def jump_hosts(session: AsyncSession) -> list[str]:
    return [j.prefix for j in await session.scalars(select(SegmentJumpHost).order_by(SegmentJumpHost.id))]


async def set_jump_hosts(session: AsyncSession, prefixes: list[str]) -> list[str]:
    """Replace the list; every enforcing asset gets a new rules revision (its allow-list changes)."""
    wanted = list(dict.fromkeys(str(ip_network(p)) for p in prefixes))
    if wanted == await jump_hosts(session):
        return wanted
    for row in await session.scalars(select(SegmentJumpHost)):
        await session.delete(row)
    await session.flush()
    now = utcnow()
    session.add_all(SegmentJumpHost(prefix=p, created_at=now) for p in wanted)
    await session.execute(
        update(SegmentAssetRow)
        .where(SegmentAssetRow.mode.in_(ENFORCING))
        .values(rules_revision=SegmentAssetRow.rules_revision + 1)
    )
    return wanted


# --------------------------------------------------------------------------- snapshot


def _snapshot_rules(asset: SegmentAssetRow, rules: Sequence[SegmentRuleRow]) -> tuple[SegmentRule, ...]:
    """What the host enforces in its mode: approved accepts when protected,
    approved drops when learning with blocks, nothing otherwise."""
    action = {"protected": "accept", "learning_with_blocks": "drop"}.get(asset.mode)
    return tuple(
        SegmentRule(
            rule_id=r.id,
            action=r.action,
            protocol=r.protocol,
            port_first=r.port_first,
            port_last=r.port_last,
            sources=tuple(ip_network(n) for n in r.networks),
        )
        for r in rules
        if r.status == "approved" and r.action == action
    )


async def build_segment_snapshot(session: AsyncSession, device: Device, revision: int) -> SegmentSnapshot:
    """The assets this device's server manages and the state each must be in."""
    server = await server_of_device(session, device.id)
    assets = (
        await session.scalars(
            select(SegmentAssetRow).where(SegmentAssetRow.server_id == server.id).order_by(SegmentAssetRow.id)
        )
    ).all()
    rules: dict[int, list[SegmentRuleRow]] = {a.id: [] for a in assets}
    if assets:
        for r in await session.scalars(
            select(SegmentRuleRow)
            .where(SegmentRuleRow.asset_id.in_(list(rules)), SegmentRuleRow.status == "approved")
            .order_by(SegmentRuleRow.id)
        ):
            rules[r.asset_id].append(r)
    jumps = tuple(ip_network(p) for p in await jump_hosts(session))
    jit = await active_openings(session, [a.id for a in assets])
    return SegmentSnapshot(
        revision=revision,
        device_id=device.id,
        name=device.name,
        assets=tuple(
            SegmentAsset(
                asset_id=a.id,
                name=a.name,
                address=ip_address(a.address),
                ssh_port=a.ssh_port,
                ssh_user=a.ssh_user,
                host_key=a.host_key,
                os=a.os,
                mode=a.mode,
                rules_revision=a.rules_revision,
                rules=_snapshot_rules(a, rules[a.id]),
                jump_hosts=jumps,
                jit_openings=jit[a.id],
            )
            for a in assets
        ),
    )
