"""Flow records at the controller, on a real controller (SQLite and PostgreSQL):
``POST /v1/flows`` only from gateways, strict and bounded; user, device, policy
and application resolved at ingest; ``GET /v1/flows`` filters; retention; the
syslog export received by a real UDP listener on loopback and parsed.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from apiaccess import enroll_gateway, raw, register
from servicedb import add_gateway_device, on_database
from syslogparse import parse_rfc5424
from zerogate.controller.services import flows
from zerogate.store.db import Database, upgrade_schema, utcnow
from zerogate.store.models import DeploymentState
from zerogate.store.models_flows import FlowRecordRow
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController

APP_ADDRESS = "10.77.0.10"


@pytest.fixture(scope="module")
def syslog_udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def controller_env(syslog_udp: socket.socket) -> dict[str, str]:
    return {"ZEROGATE_FLOW_SYSLOG": f"udp://127.0.0.1:{syslog_udp.getsockname()[1]}"}


@pytest.fixture(scope="module")
def org(controller: LocalController, admin: AccountSession) -> dict[str, Any]:
    """A user in a group with a policy to an app, her registered client, and an enrolled gateway."""
    tag = uuid.uuid4().hex[:6]
    a = admin.client
    a.post("/v1/connector-groups", {"name": f"site-{tag}", "subnets": ["10.77.0.0/24"]})
    app = f"web-{tag}"
    a.post(
        "/v1/applications",
        {
            "name": app,
            "connector_group": f"site-{tag}",
            "destinations": [
                {"address": f"{APP_ADDRESS}/32", "protocol": "tcp", "ports": ["80", "8000-8080"]}
            ],
        },
    )
    a.post("/v1/groups", {"name": f"eng-{tag}"})
    policy = a.post("/v1/policies", {"name": f"pol-{tag}", "groups": [f"eng-{tag}"], "applications": [app]})
    user = f"alice-{tag}"
    session = controller.create_user(admin, user, [f"eng-{tag}"])
    client = register(controller, session, f"laptop-{tag}")
    assert client.status_code in (200, 201), client.text[:300]
    gateway_id, _, credential = enroll_gateway(controller, admin)
    return {
        "app": app,
        "policy": policy,
        "user": user,
        "user_token": session.token,
        "client": client.json(),
        "gateway_id": gateway_id,
        "gateway": credential,
    }


def record(org: dict[str, Any], **over: Any) -> dict[str, Any]:
    end = datetime.now(UTC)
    base = {
        "start": (end - timedelta(seconds=3)).isoformat(),
        "end": end.isoformat(),
        "client": org["client"]["address"],
        "device_id": org["client"]["device_id"],
        "protocol": "tcp",
        "destination": APP_ADDRESS,
        "port": 80,
        "source_port": 40000,
        "policy_id": org["policy"]["id"],
        "packets_out": 6,
        "bytes_out": 398,
        "packets_in": 6,
        "bytes_in": 3388,
    }
    return base | over


def post(controller: LocalController, token: str, records: list[dict[str, Any]], **extra: Any) -> Any:
    return raw(controller, "POST", "/v1/flows", {"records": records, **extra}, token=token)


def listing(controller: LocalController, admin: AccountSession, **params: Any) -> list[dict[str, Any]]:
    r = raw(controller, "GET", "/v1/flows", token=admin.token, params=params)
    assert r.status_code == 200, r.text[:300]
    out: list[dict[str, Any]] = r.json()
    return out


def test_gateway_posts_and_admin_lists_with_names_resolved(
    controller: LocalController, admin: AccountSession, org: dict[str, Any]
) -> None:
    port = 8000 + int(uuid.uuid4().int % 80)
    r = post(controller, org["gateway"], [record(org, port=port)])
    assert r.status_code == 202, r.text[:300]
    assert r.json() == {"accepted": 1}
    (row,) = [f for f in listing(controller, admin, user=org["user"]) if f["port"] == port]
    assert (row["user"], row["application"], row["policy"]) == (
        org["user"],
        org["app"],
        org["policy"]["name"],
    )
    assert row["device"] == org["client"]["name"] and row["device_id"] == org["client"]["device_id"]
    assert (row["bytes_out"], row["bytes_in"], row["duration"], row["denied"]) == (398, 3388, 3.0, None)
    assert row["gateway_id"] == org["gateway_id"]


def test_device_is_found_by_address_when_the_gateway_did_not_know_it(
    controller: LocalController, admin: AccountSession, org: dict[str, Any]
) -> None:
    marker = 30000 + int(uuid.uuid4().int % 30000)
    assert (
        post(controller, org["gateway"], [record(org, device_id=None, source_port=marker)]).status_code == 202
    )
    (row,) = [f for f in listing(controller, admin, user=org["user"]) if f["source_port"] == marker]
    assert row["device_id"] == org["client"]["device_id"]


def test_refused_flows_and_the_filters(
    controller: LocalController, admin: AccountSession, org: dict[str, Any]
) -> None:
    refused = record(org, port=22, policy_id=None, denied="no-policy", source_port=None, bytes_in=0)
    assert post(controller, org["gateway"], [refused, record(org, port=80)]).status_code == 202
    denied = listing(controller, admin, denied="true", user=org["user"])
    assert denied and all(f["denied"] == "no-policy" for f in denied)
    assert any(f["port"] == 22 and f["application"] is None and f["policy"] is None for f in denied)
    allowed = listing(controller, admin, denied="false", app=org["app"])
    assert allowed and all(f["denied"] is None and f["application"] == org["app"] for f in allowed)
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert listing(controller, admin, since=future) == []
    for number in ("0.5", "1700000000"):  # not read as a Unix time: ISO 8601 only
        r = raw(controller, "GET", "/v1/flows", token=admin.token, params={"since": number})
        assert r.status_code == 422, r.text[:200]
    first = listing(controller, admin, limit=1)
    assert (
        len(first) == 1
        and listing(controller, admin, after_id=first[0]["id"], limit=1)[0]["id"] > first[0]["id"]
    )


@pytest.mark.parametrize(
    "change",
    [
        {"port": 70000},
        {"protocol": "icmp"},
        {"client": "100.64.0.2\n"},
        {"destination": "not-an-address"},
        {"extra": "field"},
        {"bytes_out": -1},
        {"policy_id": None},  # neither a policy nor a denial
        {"denied": "no-policy"},  # both
        {"start": "2026-12-06T04:00:00"},  # no time zone
        {"bytes_out": "398"},  # strict: no coercion
    ],
)
def test_malformed_records_are_refused_whole(
    controller: LocalController, org: dict[str, Any], change: dict[str, Any]
) -> None:
    r = post(controller, org["gateway"], [record(org, **change)])
    assert r.status_code == 422, r.text[:200]
    assert "\n" not in r.text.replace("\\n", "")  # no raw control character echoed back


def test_only_gateways_post_and_batches_are_bounded(
    controller: LocalController, admin: AccountSession, org: dict[str, Any]
) -> None:
    assert post(controller, "", [record(org)]).status_code == 401
    assert post(controller, admin.token, [record(org)]).status_code in (401, 403)
    client_credential = org["client"]["credential"]
    assert post(controller, client_credential, [record(org)]).status_code == 403
    big = [record(org)] * (flows.MAX_BATCH + 1)
    assert post(controller, org["gateway"], big).status_code in (413, 422)
    assert raw(controller, "GET", "/v1/flows", token=org["gateway"]).status_code in (401, 403)
    assert raw(controller, "GET", "/v1/flows", token=org["user_token"]).status_code == 403
    r = raw(controller, "GET", "/v1/flows", token=admin.token, params={"limit": flows.MAX_PAGE + 1})
    assert r.status_code == 422


def test_syslog_export_reaches_a_udp_collector(
    controller: LocalController, org: dict[str, Any], syslog_udp: socket.socket
) -> None:
    marker = 20000 + int(uuid.uuid4().int % 10000)
    assert post(controller, org["gateway"], [record(org, source_port=marker)]).status_code == 202
    got: list[dict[str, Any]] = []

    def arrived() -> bool:
        try:
            data = syslog_udp.recv(65536)
        except TimeoutError:
            return False
        message = parse_rfc5424(data)
        if message["params"].get("source_port") == str(marker):
            got.append(message)
        return bool(got)

    wait_for(arrived, 15, "the flow's syslog message")
    m = got[0]
    assert (m["pri"], m["app"], m["msgid"], m["sd_id"]) == (134, "zerogate", "flow", "flow@32473")
    p = m["params"]
    assert (p["user"], p["application"], p["policy"]) == (org["user"], org["app"], org["policy"]["name"])
    assert (p["bytes_out"], p["bytes_in"], p["port"]) == ("398", "3388", "80")


def test_retention_deletes_only_old_records_in_bounded_batches(database_url: str) -> None:
    upgrade_schema(database_url)

    async def work(db: Database) -> None:
        async with db.sessions() as session, session.begin():  # what 'controller init' writes first
            session.add(DeploymentState(id=1, revision=1, created_at=utcnow()))
        now = utcnow()
        async with db.write() as tx:
            gateway = await add_gateway_device(tx.session, f"gw-{uuid.uuid4().hex[:6]}")
            for age_days, port in ((40, 1), (31, 2), (31, 3), (1, 4)):
                at = now - timedelta(days=age_days)
                tx.session.add(
                    FlowRecordRow(
                        gateway_id=gateway,
                        started_at=at,
                        ended_at=at,
                        received_at=now,
                        client_address="100.64.0.2",
                        protocol="tcp",
                        destination=APP_ADDRESS,
                        port=port,
                    )
                )
        assert await flows.prune(db, now - timedelta(days=30), batch=2) == 3
        async with db.read() as session:
            assert [r.port for r in await session.scalars(select(FlowRecordRow))] == [4]
        assert await flows.pruner(db, days=0).run_once() == 1  # 0 days: none kept

    on_database(database_url, work)
