"""Directory-sourced segment assets in report ingest, on a real SQLite database:
an asset that left the monitored group stays until its server reports our table
gone from the host, not merely until an admin unprotected it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from zerogate.controller.schemas import segment as ss
from zerogate.controller.services import segment, segment_report
from zerogate.controller.services import segment_review as review
from zerogate.controller.state import NotFound
from zerogate.model.segment_report import SegmentReport
from zerogate.store.db import Database, WriteTx, upgrade_schema, utcnow
from zerogate.store.models import DeploymentState, SegmentAssetRow, SegmentServer

T = TypeVar("T")
DN = "cn=pc1,ou=computers,dc=example,dc=org"
MEMBER = {"dn": DN, "name": "pc1", "address": "10.60.1.1"}


def host_key() -> str:
    body = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)
    return "ssh-ed25519 " + base64.b64encode(body).decode()


def fingerprint(key: str) -> str:
    digest = hashlib.sha256(base64.b64decode(key.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Controller:
    """The segment services on one database: each call is one committed write transaction."""

    def __init__(self, url: str) -> None:
        self.url = url

    def write(self, work: Callable[[WriteTx], Awaitable[T]]) -> T:
        async def go() -> T:
            db = Database(self.url)
            try:
                async with db.write() as w:
                    return await work(w)
            finally:
                await db.close()

        return asyncio.run(go())

    def report(self, body: dict[str, Any]) -> ss.SegmentReportResult:
        parsed = SegmentReport.model_validate(body)

        async def work(w: WriteTx) -> ss.SegmentReportResult:
            server = (await w.session.scalars(select(SegmentServer))).one()
            return await segment_report.ingest(w, server, parsed, actor="device:segment:0:seg1")

        return self.write(work)

    def asset(self) -> SegmentAssetRow:
        return self.write(lambda w: segment.find_asset(w.session, "pc1"))


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    url = f"sqlite:///{tmp_path / 'zerogate.db'}"
    upgrade_schema(url)

    async def seed() -> None:  # before a write transaction can start, as 'controller init' does
        db = Database(url)
        try:
            async with db.sessions() as session, session.begin():
                session.add(DeploymentState(id=1, created_at=utcnow()))
                await segment.create_server(session, ss.SegmentServerCreate(name="seg1"))
        finally:
            await db.close()

    asyncio.run(seed())
    return Controller(url)


def test_an_unprotected_asset_that_left_the_group_stays_until_its_table_is_gone(
    controller: Controller,
) -> None:
    assert controller.report({"assets": [], "directory": [MEMBER]}).created == ["pc1"]
    asset_id, key = controller.asset().id, host_key()
    controller.report(
        {"assets": [{"asset_id": asset_id, "state": "host_key_unknown", "observed_host_key": key}]}
    )

    async def protect(w: WriteTx) -> int:
        row = await segment.find_asset(w.session, "pc1")
        await segment.trust(w.session, row, fingerprint(key))
        await review.add_rule(
            w.session, row, ss.RuleCreate(protocol="tcp", port_first=80, sources=["10.60.0.0/24"]), "admin"
        )
        await segment.set_mode(w.session, row, "learning", 60)
        await segment.set_mode(w.session, row, "protected")
        return row.rules_revision

    revision = controller.write(protect)
    enforced = {"asset_id": asset_id, "state": "enforced", "enforced_revision": revision}
    controller.report({"assets": [enforced], "directory": [MEMBER]})

    async def unprotect(w: WriteTx) -> None:
        segment.unprotect(await segment.find_asset(w.session, "pc1"))

    controller.write(unprotect)
    # the computer leaves the group before the server carried the unprotect out: kept, flagged
    result = controller.report({"assets": [enforced], "directory": []})
    assert (result.removed, result.kept) == ([], ["pc1"])
    row = controller.asset()
    assert (row.mode, row.left_directory, row.enforced_revision) == ("monitored", True, revision)
    # the server removed our table and says so: now the asset goes
    result = controller.report({"assets": [{"asset_id": asset_id, "state": "ready"}], "directory": []})
    assert result.removed == ["pc1"]
    with pytest.raises(NotFound):
        controller.asset()


def test_a_monitored_asset_that_left_the_group_goes_at_once(controller: Controller) -> None:
    controller.report({"assets": [], "directory": [MEMBER]})
    asset_id = controller.asset().id
    controller.report({"assets": [{"asset_id": asset_id, "state": "ready"}], "directory": [MEMBER]})
    assert controller.report({"assets": [], "directory": []}).removed == ["pc1"]
