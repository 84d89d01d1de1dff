"""The controller compiles the policy once per revision and shares it between
snapshot requests; a new revision, a time-window boundary or a session that
ends makes it compile again."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from apiaccess import raw, register
from dbaccess import run_sql
from zerogate.testbed.localrun import AccountSession, LocalController


def health(controller: LocalController) -> dict[str, Any]:
    r = raw(controller, "GET", "/v1/health")
    assert r.status_code == 200
    return dict(r.json())


def snapshot(controller: LocalController, credential: str) -> httpx.Response:
    r = raw(controller, "GET", "/v1/snapshot", token=credential)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def setup(controller: LocalController, admin: AccountSession) -> dict[str, Any]:
    """A user in a group that one policy lets reach one app, with three registered laptops."""
    c = admin.client
    site = c.post("/v1/connector-groups", {"name": "cache-site", "subnets": ["10.77.0.0/24"]})["name"]
    group = c.post("/v1/groups", {"name": "cache-staff"})["name"]
    app = c.post(
        "/v1/applications",
        {
            "name": "cache-wiki",
            "connector_group": site,
            "destinations": [{"address": "10.77.0.5", "ports": ["443"]}],
        },
    )["name"]
    c.post("/v1/policies", {"name": "cache-staff-wiki", "groups": [group], "applications": [app]})
    user = controller.create_user(admin, "cache-user", [group])
    devices = []
    for i in range(3):
        r = register(controller, user, f"cache-laptop-{i}")
        assert r.status_code == 200, r.text
        devices.append(r.json())
    return {"devices": devices, "policy": "cache-staff-wiki", "group": group}


def test_snapshots_of_one_revision_share_one_compile(
    controller: LocalController, setup: dict[str, Any]
) -> None:
    first = snapshot(controller, setup["devices"][0]["credential"])
    before = health(controller)["policy_cache"]
    assert before["revision"] == int(first.headers["X-Zerogate-Revision"])
    for d in setup["devices"]:
        snap = snapshot(controller, d["credential"]).json()
        assert snap["routes"] == ["10.77.0.5/32"] and snap["applications"] == ["cache-wiki"]
    after = health(controller)["policy_cache"]
    assert after["misses"] == before["misses"]  # no compile: all three came from the cache
    assert after["hits"] >= before["hits"] + 3


def test_a_change_compiles_again_and_concurrent_requests_wait_for_one_compile(
    controller: LocalController, admin: AccountSession, setup: dict[str, Any]
) -> None:
    before = health(controller)["policy_cache"]
    admin.client.patch(f"/v1/policies/{setup['policy']}", {"enabled": False})
    try:
        creds = [d["credential"] for d in setup["devices"]] * 4
        with ThreadPoolExecutor(len(creds)) as pool:
            snaps = list(pool.map(lambda cred: snapshot(controller, cred).json(), creds))
        assert all(s["routes"] == [] and s["applications"] == [] for s in snaps)  # the change is seen
        after = health(controller)["policy_cache"]
        assert after["misses"] == before["misses"] + 1, (before, after)
    finally:
        admin.client.patch(f"/v1/policies/{setup['policy']}", {"enabled": True})
    assert snapshot(controller, setup["devices"][0]["credential"]).json()["routes"] == ["10.77.0.5/32"]


def sql_time(controller: LocalController, at: datetime) -> str:
    text = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"'{text}+00'" if controller.database else f"'{text}'"


def test_a_session_that_ends_drops_out_without_any_write(
    controller: LocalController, admin: AccountSession, setup: dict[str, Any], unique: Callable[[str], str]
) -> None:
    device = setup["devices"][2]
    ends = datetime.now(UTC) + timedelta(seconds=2)
    run_sql(
        controller,
        f"update devices set session_expires_at = {sql_time(controller, ends)} where id = {device['device_id']}",
    )
    admin.client.post("/v1/groups", {"name": unique("cache-bump")})  # a write: the next snapshot is fresh
    assert snapshot(controller, device["credential"]).json()["routes"] == ["10.77.0.5/32"]
    rev = health(controller)["revision"]
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.3)
    # no write since: only the entry's own expiry can tell the session is over
    assert health(controller)["revision"] == rev
    assert snapshot(controller, device["credential"]).json()["routes"] == []
    assert snapshot(controller, setup["devices"][0]["credential"]).json()["routes"] == ["10.77.0.5/32"]
