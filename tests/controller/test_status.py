"""``GET /v1/status`` and ``zerogate admin status`` against a real controller: a connector
that reports is online, one that stops turns offline within three of its report intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from apiaccess import enroll_connector, raw
from zerogate.testbed.lab import wait_for
from zerogate.testbed.localrun import AccountSession, LocalController

INTERVAL = 0.5  # the connector's report interval in this test: offline after 1.5 s of silence


def mine(admin: AccountSession, name: str) -> dict[str, Any]:
    found: dict[str, Any] = admin.client.get("/v1/status", {"role": "connector"})
    return next(c for c in found["components"] if c["name"] == name)


def test_a_connector_is_online_while_it_reports_and_offline_after_three_missed(
    controller: LocalController, admin: AccountSession, tmp_path: Path
) -> None:
    device = enroll_connector(controller, admin, "st", "10.81.0.0/24")
    name = device["name"]
    never = mine(admin, name)
    assert not never["online"] and never["attention"] == ["has never reported since it enrolled"]

    report = {
        "version": "9.9.9",
        "interface": "zg-cn",
        "details": {"tunnel_up": True, "report_interval": INTERVAL},
    }
    assert raw(controller, "POST", "/v1/report", report, token=device["credential"]).status_code == 204
    now = mine(admin, name)
    assert now["online"] and now["version"] == "9.9.9" and now["attention"] == []
    listed = admin.client.get("/v1/devices", {"role": "connector"})
    assert next(d for d in listed if d["name"] == name)["online"] is True

    wait_for(lambda: not mine(admin, name)["online"], 15, "the silent connector to turn offline")
    gone = mine(admin, name)
    assert gone["age_seconds"] >= 3 * INTERVAL
    assert (
        gone["attention"][0].startswith("offline: nothing heard for")
        and "every 0.5 s" in gone["attention"][0]
    )

    # the CLI: table, summary, attention, and exit status 1 for scripts
    profile = tmp_path / "admin.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env |= {"ZEROGATE_PROFILE": str(profile), "COLUMNS": "300", "LC_ALL": "C.UTF-8"}
    session = {
        "url": controller.url,
        "ca_pem": controller.ca_pem.decode(),
        "username": "admin",
        "token": admin.token,
    }
    profile.write_text(json.dumps(session))
    profile.chmod(0o600)
    r = subprocess.run(
        [sys.executable, "-m", "zerogate.cli.main", "admin", "status", "--role", "connector"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    said = " ".join(r.stdout.split())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "OFFLINE" in said and f"attention connector {name}: offline" in said and "offline" in said


def test_vrrp_state_in_reports_is_accepted_strictly(
    controller: LocalController, admin: AccountSession
) -> None:
    device = enroll_connector(controller, admin, "stv", "10.82.0.0/24")
    vrrp = {"state": "master", "virtual_ip": "10.82.0.254", "interface": "lan0", "router_id": 42}
    report: dict[str, Any] = {"version": "0.1.0", "interface": "zg-cn", "details": {"vrrp": vrrp}}
    assert raw(controller, "POST", "/v1/report", report, token=device["credential"]).status_code == 204
    shown = next(
        d for d in admin.client.get("/v1/devices", {"role": "connector"}) if d["name"] == device["name"]
    )
    assert shown["report"]["details"]["vrrp"] == vrrp | {"problem": None}
    for bad in ({"state": "boss"}, {"state": "master", "router_id": 256}, {"state": "master", "extra": 1}):
        report["details"]["vrrp"] = bad
        assert raw(controller, "POST", "/v1/report", report, token=device["credential"]).status_code == 422
    gateway_side = {"version": "0.1.0", "interface": "zg-gw", "details": {"vrrp_masters": {"site": "cn1"}}}
    assert raw(controller, "POST", "/v1/report", gateway_side, token=device["credential"]).status_code == 204
