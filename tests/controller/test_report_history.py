"""Report history: a real controller (SQLite and PostgreSQL) keeps one compact sample
per device per interval from ``POST /v1/report``, serves it at
``GET /v1/devices/{id}/history`` and through ``zerogate admin device history``,
and deletes samples past the retention in the background, in bounded batches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, inspect, select

from apiaccess import enroll_gateway, raw
from dbaccess import run_sql
from servicedb import add_gateway_device, on_database
from zerogate.controller.services import report_history
from zerogate.store.db import MIGRATIONS_DIR, Database, async_url, upgrade_schema, utcnow
from zerogate.store.models import DeploymentState
from zerogate.store.models_history import ReportSample
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController

INTERVAL = 5  # the smallest report_history_interval: the throttle shows in seconds


@pytest.fixture(scope="module")
def controller_env() -> dict[str, str]:
    return {"ZEROGATE_REPORT_HISTORY_INTERVAL": str(INTERVAL)}


def gateway_report(handshake_age: int, rx: int, failovers: int) -> dict[str, Any]:
    now = int(time.time())

    def peer(role: str, n: int, **extra: Any) -> dict[str, Any]:
        return {"role": role, "public_key": f"{n:0>43}=", "rx_bytes": rx, "tx_bytes": 2 * rx, **extra}

    peers = [
        peer("connector", 1, name="cn1", up=True, active=True, latest_handshake=now - handshake_age),
        peer("connector", 2, name="cn2", up=False, active=False, latest_handshake=now - 3),
        peer("client", 3, latest_handshake=now - 100_000),  # idle clients never count as the oldest
        peer("client", 4),
    ]
    details = {"revision": 9, "failovers": failovers, "nft_apply_mode": "elements", "nft_apply_ms": 4.5}
    return {"version": "0.1.0", "interface": "zg-gw", "peers": peers, "details": details}


def history(controller: LocalController, token: str, device_id: int, **params: Any) -> dict[str, Any]:
    r = raw(controller, "GET", f"/v1/devices/{device_id}/history", token=token, params=params)
    assert r.status_code == 200, r.text[:300]
    out: dict[str, Any] = r.json()
    return out


def sql_time(controller: LocalController, at: datetime) -> str:
    """``at`` as the controller stores it: SQLite compares times as text, without a zone."""
    text = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return text if not controller.database else text + "+00:00"


def post(controller: LocalController, credential: str, report: dict[str, Any]) -> None:
    r = raw(controller, "POST", "/v1/report", report, token=credential)
    assert r.status_code == 204, r.text[:300]


def test_a_report_becomes_one_sample_per_interval_with_the_numbers_to_graph(
    controller: LocalController, admin: AccountSession
) -> None:
    device_id, name, credential = enroll_gateway(controller, admin)
    started = time.monotonic()
    post(controller, credential, gateway_report(handshake_age=40, rx=1000, failovers=1))
    for rx in (2000, 3000):  # within the interval: no new samples
        post(controller, credential, gateway_report(handshake_age=40, rx=rx, failovers=1))
    found = history(controller, admin.token, device_id)
    assert time.monotonic() - started < INTERVAL, "too slow to see the throttle"
    assert (found["name"], found["role"], found["interval_seconds"]) == (name, "gateway", INTERVAL)
    [sample] = found["samples"]
    assert sample["peers"] == 4 and sample["client_peers"] == 2
    assert sample["connectors_up"] == 1 and sample["connectors_active"] == 1
    assert 40 <= sample["handshake_age_max"] < 100  # cn1's, not the idle client's 100,000 s
    assert (sample["rx_bytes"], sample["tx_bytes"]) == (4000, 8000)  # the first report's
    assert (sample["failovers"], sample["nft_apply_ms"], sample["revision"]) == (1, 4.5, 9)
    assert sample["tunnel_up"] is None  # a connector's number: not reported by a gateway

    def second_sample() -> bool:
        post(controller, credential, gateway_report(handshake_age=5, rx=5000, failovers=2))
        return len(history(controller, admin.token, device_id)["samples"]) == 2

    wait_for(second_sample, 3 * INTERVAL, "a second sample after the interval", interval=0.5)
    first, second = history(controller, admin.token, device_id)["samples"]
    gap = datetime.fromisoformat(second["at"]) - datetime.fromisoformat(first["at"])
    assert gap >= timedelta(seconds=INTERVAL)
    assert (second["rx_bytes"], second["failovers"]) == (20000, 2)


def test_history_pages_by_time_and_is_for_admins_only(
    controller: LocalController, admin: AccountSession
) -> None:
    device_id, _, credential = enroll_gateway(controller, admin)
    # Older samples as a week of reports would have left them (written straight into the database).
    base = utcnow() - timedelta(hours=30)
    for i in range(5):
        at = sql_time(controller, base + timedelta(minutes=i))
        run_sql(
            controller,
            "INSERT INTO report_history (device_id, at, peers, client_peers, rx_bytes, tx_bytes) "
            f"VALUES ({device_id}, '{at}', {i}, 0, 0, 0)",
        )
    east = timezone(timedelta(hours=2))  # the same instant in another zone selects the same
    since = (base - timedelta(seconds=1)).astimezone(east).isoformat()
    page = history(controller, admin.token, device_id, since=since, limit=2)
    assert [s["peers"] for s in page["samples"]] == [0, 1] and page["more"] is True
    rest = history(controller, admin.token, device_id, since=page["samples"][-1]["at"], limit=10)
    assert [s["peers"] for s in rest["samples"]] == [2, 3, 4] and rest["more"] is False
    assert history(controller, admin.token, device_id)["samples"] == []  # by default the last 24 h: none

    path = f"/v1/devices/{device_id}/history"
    assert raw(controller, "GET", path).status_code == 401
    assert raw(controller, "GET", path, token=credential).status_code == 403  # the device itself
    assert raw(controller, "GET", "/v1/devices/999999/history", token=admin.token).status_code == 404
    assert raw(controller, "GET", f"/v1/devices/{2**70}/history", token=admin.token).status_code == 404
    naive = {"since": "2026-01-01T00:00:00"}  # no zone: ambiguous, refused
    assert raw(controller, "GET", path, token=admin.token, params=naive).status_code == 422
    for number in ("0.5", "1700000000"):  # not read as a Unix time: ISO 8601 only
        assert raw(controller, "GET", path, token=admin.token, params={"since": number}).status_code == 422
    too_many = {"limit": 10081}
    assert raw(controller, "GET", path, token=admin.token, params=too_many).status_code == 422
    assert raw(controller, "GET", path, token=admin.token, params={"device": "1"}).status_code == 422


def test_the_cli_prints_a_devices_history(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    device_id, name, credential = enroll_gateway(controller, admin)
    post(controller, credential, gateway_report(handshake_age=10, rx=7, failovers=0))
    profile = tmp_path / "admin.json"
    profile.touch(mode=0o600)
    profile.write_text(
        json.dumps(
            {
                "url": controller.url,
                "ca_pem": controller.ca_pem.decode(),
                "username": "admin",
                "token": admin.token,
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env |= {"ZEROGATE_PROFILE": str(profile), "LC_ALL": "C.UTF-8", "COLUMNS": "300"}

    def zerogate(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "zerogate.cli.main", "admin", "device", "history", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)

    shown = zerogate(name, "--since", "1h", "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["device_id"] == device_id and [s["rx_bytes"] for s in doc["samples"]] == [28]
    table = zerogate(name, "--role", "gateway")
    assert table.returncode == 0, table.stderr
    assert "1 samples" in table.stdout and "handshake_age_max" in table.stdout
    later = zerogate(name, "--since", (utcnow() + timedelta(minutes=5)).isoformat(), "--json")
    assert json.loads(later.stdout)["samples"] == []
    bad = zerogate(name, "--since", "yesterday\x1b[2J")
    assert bad.returncode == 1 and "\x1b" not in bad.stdout + bad.stderr
    assert zerogate(f"nobody-{uuid.uuid4().hex[:6]}").returncode == 1


# -- retention -------------------------------------------------------------------------


async def _seed(db: Database, old: int, recent: int) -> int:
    """A device with ``old`` samples from 8-9 days ago and ``recent`` from the last hour."""
    now = utcnow()
    async with db.write() as tx:
        device_id = await add_gateway_device(tx.session, f"gw-{uuid.uuid4().hex[:6]}")
        for i in range(old):
            at = now - timedelta(days=9) + timedelta(seconds=i)
            tx.session.add(
                ReportSample(device_id=device_id, at=at, peers=1, client_peers=0, rx_bytes=0, tx_bytes=0)
            )
        for i in range(recent):
            at = now - timedelta(minutes=i + 1)
            tx.session.add(
                ReportSample(device_id=device_id, at=at, peers=2, client_peers=0, rx_bytes=0, tx_bytes=0)
            )
    return device_id


async def _count(db: Database, peers: int) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).where(ReportSample.peers == peers)) or 0)


def test_prune_deletes_what_is_past_retention_in_bounded_batches(database_url: str) -> None:
    upgrade_schema(database_url)

    async def work(db: Database) -> None:
        async with db.sessions() as session, session.begin():  # what 'controller init' writes first
            session.add(DeploymentState(id=1, revision=1, created_at=utcnow()))
        await _seed(db, old=25, recent=3)
        batches: list[int] = []
        original = db.write

        def counting_write() -> Any:
            batches.append(1)
            return original()

        db.write = counting_write  # type: ignore[method-assign]
        deleted = await report_history.prune(db, utcnow() - timedelta(days=7), batch=10)
        db.write = original  # type: ignore[method-assign]
        assert deleted == 25
        assert len(batches) == 3  # 10 + 10 + 5: no transaction deletes more than a batch
        assert await _count(db, 1) == 0 and await _count(db, 2) == 3
        pruner = report_history.pruner(db, days=0)  # 0 days: history off, the rest goes too
        assert await pruner.run_once() == 3 and await _count(db, 2) == 0

    on_database(database_url, work)


def test_a_running_controller_prunes_in_the_background(tmp_path: Path) -> None:
    lc = LocalController(tmp_path / "data", extra_env={"ZEROGATE_REPORT_HISTORY_DAYS": "7"}).init()
    url = f"sqlite:///{lc.data_dir / 'zerogate.db'}"
    on_database(url, lambda db: _seed(db, old=12, recent=4))
    with lc.start():

        def pruned() -> bool:
            return run_sql(lc, "SELECT count(*) FROM report_history WHERE peers = 1") == [("0",)]

        wait_for(pruned, 30, "the controller to delete samples older than 7 days")
        assert run_sql(lc, "SELECT count(*) FROM report_history WHERE peers = 2") == [("4",)]
        assert "report history: 12 older than 7 days deleted" in lc.output()


# -- schema ----------------------------------------------------------------------------


def test_the_history_migration_goes_down_and_up(database_url: str) -> None:
    upgrade_schema(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = async_url(database_url)

    def tables() -> set[str]:
        async def go(db: Database) -> set[str]:
            async with db.engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))

        return on_database(database_url, go)

    assert "report_history" in tables()
    command.downgrade(cfg, "0006")
    assert "report_history" not in tables() and "devices" in tables()
    upgrade_schema(database_url)
    assert "report_history" in tables()
