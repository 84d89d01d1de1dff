"""Segment services called directly, without HTTP, on a real SQLite database:
servers and their keys, assets, host-key trust, modes, report ingest
(flows, host keys, directory membership), review and simulation, and the
segment snapshot. Each step commits on success and rolls back on a refusal,
as a request would; report ingest runs in a write transaction with its audit.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from servicedb import Step, migrated, on_database, seed_default_pool, steps
from zerogate.controller import schemas as s
from zerogate.controller.policy_cache import PolicyCache
from zerogate.controller.schemas import segment as ss
from zerogate.controller.services import (
    connector_groups,
    enrollment,
    provisioning_keys,
    segment,
    segment_report,
)
from zerogate.controller.services import segment_review as review
from zerogate.controller.services.enrollment import DeviceCA
from zerogate.controller.services.snapshots import build_snapshot
from zerogate.controller.state import Conflict, NotFound, Unprocessable
from zerogate.model.segment_report import SegmentReport
from zerogate.model.snapshot import SegmentSnapshot
from zerogate.pki.ca import create_ca, create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.store.db import Database, WriteTx, utcnow
from zerogate.store.models import (
    AuditRecord,
    DeploymentState,
    Device,
    SegmentAssetRow,
    SegmentFlowRow,
    SegmentServer,
)

T = TypeVar("T")


class Tx(Protocol):
    def __call__(self, work: Callable[[WriteTx], Awaitable[T]]) -> T: ...


def host_key(seed: bytes = b"") -> str:
    """An ed25519 public key line (random bytes of the right shape)."""
    body = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + (seed or os.urandom(32)).ljust(32, b"\x00")[:32]
    return "ssh-ed25519 " + base64.b64encode(body).decode()


def fp(key: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return migrated(tmp_path)


@pytest.fixture
def step(db_url: str) -> Step:
    run = steps(db_url)

    async def seed(session: AsyncSession) -> None:
        session.add(DeploymentState(id=1, created_at=utcnow()))
        await seed_default_pool(session)
        await connector_groups.create(
            session, s.ConnectorGroupCreate(name="office", subnets=["10.60.0.0/24"])
        )
        await segment.create_server(session, ss.SegmentServerCreate(name="seg1"))
        await segment.create_server(session, ss.SegmentServerCreate(name="seg2"))

    run(seed)
    return run


@pytest.fixture
def tx(db_url: str, step: Step) -> Tx:
    def run(work: Callable[[WriteTx], Awaitable[T]]) -> T:
        async def one(db: Database) -> T:
            async with db.write() as w:
                return await work(w)

        return on_database(db_url, one)

    return run


def add(step: Step, name: str, address: str, server: str = "seg1") -> int:
    body = ss.AssetCreate(name=name, address=address, server=server)
    return step(lambda db: segment.add_asset(db, body)).id


async def _server(db: AsyncSession, name: str) -> SegmentServer:
    return (await db.scalars(select(SegmentServer).where(SegmentServer.name == name))).one()


def report(tx: Tx, server: str, body: dict[str, Any], flow_limit: int = 10_000) -> ss.SegmentReportResult:
    parsed = SegmentReport.model_validate(body)

    async def work(w: WriteTx) -> ss.SegmentReportResult:
        return await segment_report.ingest(
            w,
            await _server(w.session, server),
            parsed,
            actor=f"device:segment:0:{server}",
            flow_limit=flow_limit,
        )

    return tx(work)


def asset(step: Step, name: str) -> SegmentAssetRow:
    return step(lambda db: segment.find_asset(db, name))


def flow(peer: str, port: int = 443, count: int = 1, at: datetime | None = None) -> dict[str, Any]:
    when = (at or datetime(2026, 1, 5, 12, 0, tzinfo=UTC)).isoformat()
    return {
        "protocol": "tcp",
        "direction": "inbound",
        "local_port": port,
        "peer": peer,
        "process": "nginx",
        "first_seen": when,
        "last_seen": when,
        "count": count,
    }


async def segment_trust(db: AsyncSession, name: str, fingerprint: str) -> None:
    await segment.trust(db, await segment.find_asset(db, name), fingerprint)


# ----------------------------------------------------------------- keys and enrollment


def test_a_segment_key_enrolls_the_host_of_its_server(step: Step) -> None:
    made = step(
        lambda db: provisioning_keys.create(
            db,
            s.ProvisioningKeyCreate(max_uses=2),
            created_by="admin:root",
            ttl_minutes=60,
            segment_server="seg1",
        )
    )
    assert step(lambda db: provisioning_keys.key_target(db, made.row)) == "segment-server:seg1"
    preview = step(lambda db: enrollment.preview_key(db, made.secret))
    assert (preview.role, preview.segment_server and preview.segment_server.name) == ("segment", "seg1")
    key, cert = create_ca("segment test CA")
    ca = DeviceCA(cert_pem=cert, key_pem=key)

    def enroll() -> enrollment.Enrolled:
        body = s.EnrollRequest(
            key=made.secret,
            name="ignored",
            csr=create_csr(generate_private_key(), "seg1").decode(),
            wg_public_key=generate_keypair()[1],
        )
        return step(lambda db: enrollment.enroll(db, ca, body, {}))

    first = enroll()
    assert (first.device.role, first.device.name) == ("segment", "seg1")
    second = enroll()

    async def devices(db: AsyncSession) -> dict[int, str]:
        return {d.id: d.status for d in await db.scalars(select(Device))}

    assert step(devices) == {first.device.id: "revoked", second.device.id: "active"}
    assert step(lambda db: _server(db, "seg1")).device_id == second.device.id


def test_an_unknown_segment_server_gets_no_key(step: Step) -> None:
    with pytest.raises(NotFound):
        step(
            lambda db: provisioning_keys.create(
                db, s.ProvisioningKeyCreate(), created_by="a", ttl_minutes=5, segment_server="nope"
            )
        )


# ----------------------------------------------------------------- inventory and host keys


def test_assets_are_unique_and_a_server_with_assets_is_not_deleted(step: Step) -> None:
    add(step, "web1", "10.60.0.10")
    with pytest.raises(Conflict):
        add(step, "web1", "10.60.0.11")
    with pytest.raises(NotFound):
        add(step, "web2", "10.60.0.11", server="nope")

    async def delete(db: AsyncSession) -> None:
        await segment.delete_server(db, await _server(db, "seg1"))

    with pytest.raises(Conflict, match="still manages 1 asset"):
        step(delete)
    row = asset(step, "web1")
    assert (row.ssh_port, row.ssh_user, row.mode, row.source, row.host_key) == (
        22,
        "zerogate-segment",
        "monitored",
        "static",
        None,
    )


def test_trust_pins_only_the_offered_key_and_a_change_is_never_adopted(step: Step, tx: Tx) -> None:
    asset_id = add(step, "db1", "10.60.0.20")
    with pytest.raises(Unprocessable, match="has not offered a host key"):
        step(lambda db: segment_trust(db, "db1", "SHA256:" + "A" * 43))
    first = host_key()
    report(
        tx,
        "seg1",
        {"assets": [{"asset_id": asset_id, "state": "host_key_unknown", "observed_host_key": first}]},
    )
    with pytest.raises(Unprocessable, match="not the key"):
        step(lambda db: segment_trust(db, "db1", fp(host_key())))
    assert asset(step, "db1").host_key is None
    step(lambda db: segment_trust(db, "db1", fp(first)))
    assert asset(step, "db1").host_key == first

    second = host_key()
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "ready", "observed_host_key": second}]})
    row = asset(step, "db1")
    assert row.host_key == first and row.state == "host_key_changed"
    assert fp(second) in row.detail and "trust" in row.detail
    # the server reporting "ready" again with the new key does not clear it either
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "ready", "observed_host_key": second}]})
    assert asset(step, "db1").state == "host_key_changed"

    async def audits(db: AsyncSession) -> list[str]:
        return [r.action for r in await db.scalars(select(AuditRecord).order_by(AuditRecord.id))]

    assert step(audits).count("segment-host-key-changed") == 1
    step(lambda db: segment_trust(db, "db1", fp(second)))
    row = asset(step, "db1")
    assert row.host_key == second and row.state == "trusted"


# ----------------------------------------------------------------- modes


def test_modes_follow_the_transitions_and_protect_needs_a_key_and_a_rule(step: Step, tx: Tx) -> None:
    asset_id = add(step, "app1", "10.60.0.30")

    async def mode(db: AsyncSession, target: str, window: int | None = None) -> str:
        return await segment.set_mode(db, await segment.find_asset(db, "app1"), target, window)

    with pytest.raises(Unprocessable, match="cannot go to protected"):
        step(lambda db: mode(db, "protected"))
    with pytest.raises(Unprocessable, match="needs a window"):
        step(lambda db: mode(db, "learning"))
    revision = asset(step, "app1").rules_revision
    step(lambda db: mode(db, "learning", 3600))
    row = asset(step, "app1")
    assert row.mode == "learning" and row.rules_revision == revision + 1
    assert row.learning_until is not None and row.learning_started_at is not None
    assert timedelta(minutes=59) < row.learning_until - row.learning_started_at <= timedelta(hours=1)

    with pytest.raises(Unprocessable, match="no pinned host key"):
        step(lambda db: mode(db, "protected"))
    key = host_key()
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "learning", "observed_host_key": key}]})
    step(lambda db: segment_trust(db, "app1", fp(key)))
    with pytest.raises(Unprocessable, match="no approved accept rule"):
        step(lambda db: mode(db, "protected"))

    async def rule(db: AsyncSession) -> None:
        body = ss.RuleCreate(protocol="tcp", port_first=443, sources=["site:office"])
        await review.add_rule(db, await segment.find_asset(db, "app1"), body, "admin:root")

    step(rule)
    step(lambda db: mode(db, "protected"))
    assert asset(step, "app1").mode == "protected"

    async def unprotect(db: AsyncSession) -> str:
        return segment.unprotect(await segment.find_asset(db, "app1"))

    assert step(unprotect) == "protected"
    assert asset(step, "app1").mode == "monitored"
    assert step(unprotect) == "monitored"  # always allowed, nothing to do


def test_extend_and_a_learning_window_that_ended(step: Step, tx: Tx) -> None:
    asset_id = add(step, "app2", "10.60.0.31")

    async def extend(db: AsyncSession) -> datetime:
        return segment.extend(await segment.find_asset(db, "app2"), 60)

    with pytest.raises(Unprocessable, match="not learning"):
        step(extend)

    async def learn(db: AsyncSession) -> None:
        await segment.set_mode(db, await segment.find_asset(db, "app2"), "learning", 1)

    step(learn)
    until = asset(step, "app2").learning_until
    assert until is not None and step(extend) >= until + timedelta(seconds=59)

    async def past(db: AsyncSession) -> None:
        (await segment.find_asset(db, "app2")).learning_until = utcnow() - timedelta(seconds=1)

    step(past)
    revision = step(lambda db: db.scalar(select(DeploymentState.revision)))
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "learning"}]})
    assert asset(step, "app2").mode == "monitored"
    assert step(lambda db: db.scalar(select(DeploymentState.revision))) == revision + 1


# ----------------------------------------------------------------- report ingest


def test_a_report_touches_only_the_servers_own_assets(step: Step, tx: Tx) -> None:
    mine = add(step, "mine", "10.60.0.40")
    theirs = add(step, "theirs", "10.60.0.41", server="seg2")
    result = report(
        tx,
        "seg1",
        {
            "assets": [
                {"asset_id": theirs, "state": "failed", "detail": "x", "flows": [flow("10.60.0.5")]},
                {"asset_id": 999999, "state": "ready"},
                {"asset_id": 2**40, "state": "ready"},
                {"asset_id": mine, "state": "ready", "ssh_ports": [22, 2222, 22], "enforced_revision": 3},
            ]
        },
    )
    assert result.updated == 1 and result.ignored == [theirs, 999999, 2**40]
    row = asset(step, "theirs")
    assert (row.state, row.detail, row.reported_at) == ("new", "", None)
    assert step(lambda db: db.scalar(select(func.count()).select_from(SegmentFlowRow))) == 0
    row = asset(step, "mine")
    assert (row.state, row.ssh_ports, row.enforced_revision) == ("ready", [22, 2222], 3)


def test_flows_merge_and_the_excess_is_refused_and_said(step: Step, tx: Tx) -> None:
    asset_id = add(step, "web3", "10.60.0.50")
    body = {"assets": [{"asset_id": asset_id, "state": "learning", "flows": [flow("10.60.0.5", count=2)]}]}
    report(tx, "seg1", body, flow_limit=2)
    later = datetime(2026, 1, 6, 12, 0, tzinfo=UTC)
    result = report(
        tx,
        "seg1",
        {
            "assets": [
                {
                    "asset_id": asset_id,
                    "state": "learning",
                    "flows": [flow("10.60.0.5", count=3, at=later), flow("10.60.0.6"), flow("10.60.0.7")],
                }
            ]
        },
        flow_limit=2,
    )
    assert result.flows_refused == 1
    row = asset(step, "web3")
    flows = step(lambda db: review.asset_flows(db, row))
    by_peer = {str(f.peer): f for f in flows}
    assert set(by_peer) == {"10.60.0.5", "10.60.0.6"}
    assert by_peer["10.60.0.5"].count == 5 and by_peer["10.60.0.5"].last_seen == later
    row = asset(step, "web3")
    assert row.flows_refused == 1 and "1 new flow(s) refused" in row.detail
    # full: a new peer is refused, a known one still counts
    body = {
        "assets": [
            {"asset_id": asset_id, "state": "learning", "flows": [flow("10.60.0.8"), flow("10.60.0.6")]}
        ]
    }
    assert report(tx, "seg1", body, flow_limit=2).flows_refused == 1
    counts = {str(f.peer): f.count for f in step(lambda db: review.asset_flows(db, row))}
    assert counts == {"10.60.0.5": 5, "10.60.0.6": 2}


def test_directory_members_become_assets_and_leave_unless_protected(step: Step, tx: Tx) -> None:
    def directory(*names: str) -> dict[str, Any]:
        return {
            "assets": [],
            "directory": [
                {"dn": f"cn={n},ou=computers,dc=example,dc=org", "name": n, "address": f"10.60.1.{i + 1}"}
                for i, n in enumerate(names)
            ],
        }

    revision = step(lambda db: db.scalar(select(DeploymentState.revision)))
    result = report(tx, "seg1", directory("pc1", "pc2", "pc3"))
    assert sorted(result.created) == ["pc1", "pc2", "pc3"]
    assert step(lambda db: db.scalar(select(DeploymentState.revision))) == revision + 1
    row = asset(step, "pc2")
    assert (row.source, row.mode, row.directory_dn) == (
        "directory",
        "monitored",
        "cn=pc2,ou=computers,dc=example,dc=org",
    )

    # pc3 gets protected (key pinned, a rule approved)
    key = host_key()
    report(
        tx,
        "seg1",
        {"assets": [{"asset_id": asset(step, "pc3").id, "state": "ready", "observed_host_key": key}]},
    )
    step(lambda db: segment_trust(db, "pc3", fp(key)))

    async def protect(db: AsyncSession) -> None:
        row = await segment.find_asset(db, "pc3")
        await review.add_rule(db, row, ss.RuleCreate(protocol="tcp", port_first=22, sources=["clients"]), "a")
        await segment.set_mode(db, row, "learning", 60)
        await segment.set_mode(db, row, "protected")

    step(protect)
    # a static asset of the same name as a member is left alone
    add(step, "static1", "10.60.0.99")
    result = report(tx, "seg1", directory("pc1", "static1"))
    assert result.removed == ["pc2"] and result.kept == ["pc3"] and result.created == []
    with pytest.raises(NotFound):
        asset(step, "pc2")
    assert asset(step, "pc3").left_directory
    assert asset(step, "static1").source == "static"
    # no directory configured: nothing follows
    assert report(tx, "seg1", {"assets": []}).removed == []
    assert asset(step, "pc1").source == "directory"

    async def actions(db: AsyncSession) -> list[str]:
        return [r.action for r in await db.scalars(select(AuditRecord).order_by(AuditRecord.id))]

    done = step(actions)
    assert done.count("segment-asset-joined") == 3
    assert done.count("segment-asset-removed") == 1 and done.count("segment-asset-left-directory") == 1


# ----------------------------------------------------------------- review and snapshot


def test_proposals_decisions_simulation_and_the_snapshot(step: Step, tx: Tx) -> None:
    other = add(step, "jump1", "10.60.2.9")
    asset_id = add(step, "web9", "10.60.0.90")
    flows = [
        flow("10.60.0.5"),
        flow("10.60.0.6"),
        flow("10.60.2.9", port=22),
        flow("198.51.100.7", port=8080),
    ]
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "learning", "flows": flows}]})
    assert other  # its address is a known group

    async def propose(db: AsyncSession) -> review.Proposed:
        return await review.propose_rules(db, await segment.find_asset(db, "web9"))

    made = step(propose)
    by_port = {r.port_first: r for r in made.rules}
    assert by_port[443].sources == ["site:office"] and by_port[443].networks == ["10.60.0.0/24"]
    assert by_port[22].sources == ["asset:jump1"]
    assert by_port[8080].sources == ["198.51.100.7/32"]
    assert by_port[443].evidence and by_port[443].evidence["peers"] == 2

    async def sim(db: AsyncSession, ids: list[int], everything: bool = False) -> Any:
        return await review.simulate(db, await segment.find_asset(db, "web9"), ids, everything)

    _, result = step(lambda db: sim(db, [by_port[443].id]))
    assert {str(v.peer): v.allowed for v in result.sources} == {
        "10.60.0.5": True,
        "10.60.0.6": True,
        "10.60.2.9": False,
        "198.51.100.7": False,
    }
    _, everything = step(lambda db: sim(db, [], True))
    assert everything.blocks_nothing

    async def decide(db: AsyncSession, rule_id: int, status: str) -> Any:
        return await review.decide(db, await segment.find_asset(db, "web9"), rule_id, status, "admin:root")

    step(lambda db: decide(db, by_port[443].id, "approved"))
    step(lambda db: decide(db, by_port[8080].id, "rejected"))

    async def edit(db: AsyncSession) -> Any:
        body = ss.RuleEdit(port_first=22, port_last=23, sources=["10.60.2.0/24"])
        return await review.edit(db, await segment.find_asset(db, "web9"), by_port[22].id, body, "admin:root")

    before, edited = step(edit)
    assert before["sources"] == ["asset:jump1"]
    assert (edited.status, edited.port_last, edited.networks) == ("approved", 23, ["10.60.2.0/24"])
    # proposing again keeps the decided services decided
    assert step(propose).rules == []

    async def bad_edit(db: AsyncSession) -> Any:
        body = ss.RuleEdit(sources=["site:nowhere"])
        return await review.edit(db, await segment.find_asset(db, "web9"), by_port[22].id, body, "a")

    with pytest.raises(NotFound, match=r"sources\[0\] names no known group"):
        step(bad_edit)

    key = host_key()
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "learning", "observed_host_key": key}]})
    step(lambda db: segment_trust(db, "web9", fp(key)))

    async def protect(db: AsyncSession) -> None:
        await segment.set_mode(db, await segment.find_asset(db, "web9"), "learning", 60)
        await segment.set_mode(db, await segment.find_asset(db, "web9"), "protected")
        await segment.set_jump_hosts(db, ["192.0.2.0/28"])

    step(protect)

    async def snapshot(db: AsyncSession) -> Any:
        server = await _server(db, "seg1")
        device = Device(
            role="segment",
            name="seg1",
            credential_digest="d" * 64,
            wg_public_key=generate_keypair()[1],
            cert_serial="1",
            cert_pem="x",
            created_at=utcnow(),
        )
        db.add(device)
        await db.flush()
        server.device_id = device.id
        return await build_snapshot(db, device, 7, PolicyCache())

    snap = step(snapshot)
    assert isinstance(snap, SegmentSnapshot) and snap.role == "segment"
    by_name = {a.name: a for a in snap.assets}
    assert set(by_name) == {"jump1", "web9"}
    web = by_name["web9"]
    assert web.mode == "protected" and web.host_key == key
    assert sorted((r.port_first, r.port_last, [str(n) for n in r.sources]) for r in web.rules) == [
        (22, 23, ["10.60.2.0/24"]),
        (443, 443, ["10.60.0.0/24"]),
    ]
    assert [str(j) for j in web.jump_hosts] == ["192.0.2.0/28"]
    assert by_name["jump1"].rules == ()
    # the snapshot survives its own wire format
    assert SegmentSnapshot.model_validate(snap.model_dump(mode="json")) == snap


def test_the_last_approved_rule_of_a_protected_asset_stays(step: Step, tx: Tx) -> None:
    asset_id = add(step, "solo", "10.60.0.70")
    key = host_key()
    report(tx, "seg1", {"assets": [{"asset_id": asset_id, "state": "ready", "observed_host_key": key}]})
    step(lambda db: segment_trust(db, "solo", fp(key)))

    async def protect(db: AsyncSession) -> int:
        row = await segment.find_asset(db, "solo")
        rule = await review.add_rule(
            db, row, ss.RuleCreate(protocol="udp", port_first=53, sources=["clients"]), "a"
        )
        await segment.set_mode(db, row, "learning", 60)
        await segment.set_mode(db, row, "protected")
        return rule.id

    rule_id = step(protect)

    async def drop(db: AsyncSession) -> Any:
        return await review.delete_rule(db, await segment.find_asset(db, "solo"), rule_id)

    with pytest.raises(Unprocessable, match="last approved rule"):
        step(drop)

    async def remove(db: AsyncSession) -> None:
        await segment.remove_asset(db, await segment.find_asset(db, "solo"))

    with pytest.raises(Conflict, match="unprotect it first"):
        step(remove)
