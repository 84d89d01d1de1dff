"""Windows assets through the real controller (SQLite and PostgreSQL): ``os`` on create
and show, WinRM defaults (port 5986, a Windows account), the listener certificate's
``x509-sha256`` pin reported, trusted and sent in the snapshot the segment server parses;
and ``zerogate admin segment asset add --os windows`` as an operator types it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiaccess import raw
from zerogate.model.snapshot import parse_snapshot
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

Unique = Callable[[str], str]
ASSETS = "/v1/segment/assets"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def certificate_pin() -> tuple[str, str]:
    """A listener certificate's pin and fingerprint, as WinRmHostOps.scan_host_key makes them."""
    digest = hashlib.sha256(os.urandom(600)).digest()  # stands for the DER of a certificate
    b64 = base64.b64encode(digest).decode()
    return "x509-sha256 " + b64, "SHA256:" + b64.rstrip("=")


@pytest.fixture(scope="module")
def server(controller: LocalController, admin: AccountSession) -> tuple[str, str]:
    """An enrolled segment server: its name and device credential."""
    name = "seg-win"
    ok(raw(controller, "POST", "/v1/segment-servers", {"name": name}, admin.token), 201)
    key = ok(raw(controller, "POST", f"/v1/segment-servers/{name}/provisioning-keys", {}, admin.token), 201)
    body = {
        "key": key["key"],
        "name": name,
        "csr": create_csr(generate_private_key(), name).decode(),
        "wg_public_key": generate_keypair()[1],
    }
    return name, ok(raw(controller, "POST", "/v1/enroll", body))["credential"]


def test_a_windows_asset_is_onboarded_by_its_certificate_pin(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    name, credential = server
    host = unique("win")
    body = {"name": host, "address": "10.77.0.5", "server": name, "os": "windows", "ssh_user": "CORP\\zgsvc"}
    added = ok(raw(controller, "POST", ASSETS, body, admin.token), 201)
    assert (added["os"], added["ssh_port"], added["ssh_user"]) == ("windows", 5986, "CORP\\zgsvc")
    pin, fingerprint = certificate_pin()
    report = {"assets": [{"asset_id": added["id"], "state": "host_key_unknown", "observed_host_key": pin}]}
    ok(raw(controller, "POST", "/v1/segment/report", report, credential))
    shown = ok(raw(controller, "GET", f"{ASSETS}/{host}", token=admin.token))
    assert shown["observed_host_key_fingerprint"] == fingerprint and shown["os"] == "windows"

    wrong = raw(
        controller, "POST", f"{ASSETS}/{host}/trust", {"fingerprint": "SHA256:" + "B" * 43}, admin.token
    )
    assert wrong.status_code == 422 and "SHA256" in wrong.json()["detail"]
    assert "ssh-keygen" not in wrong.json()["detail"]  # the admin is told to check the certificate
    trusted = ok(raw(controller, "POST", f"{ASSETS}/{host}/trust", {"fingerprint": fingerprint}, admin.token))
    assert trusted["host_key_fingerprint"] == fingerprint

    snapshot = parse_snapshot("segment", ok(raw(controller, "GET", "/v1/snapshot", token=credential)))
    mine = next(a for a in snapshot.assets if a.name == host)
    assert (mine.os, mine.host_key, mine.ssh_port, mine.ssh_user) == ("windows", pin, 5986, "CORP\\zgsvc")


@pytest.mark.parametrize(
    "body",
    [
        {"os": "windows", "ssh_user": "CORP\\zg;rm"},
        {"os": "windows", "ssh_user": "a" * 33},
        {"os": "linux", "ssh_user": "CORP\\zgsvc"},  # a Windows account never reaches ssh's argv
        {"ssh_user": "zg@CORP.TEST"},
        {"os": "macos"},
        {"os": "Windows"},
        {"os": 1},
    ],
    ids=["win-user", "win-long", "linux-winuser", "default-linux", "other-os", "case", "number"],
)
def test_the_os_and_its_account_are_strict(
    controller: LocalController, admin: AccountSession, server: tuple[str, str], body: dict[str, Any]
) -> None:
    full = {"name": "strict-win", "address": "10.77.9.9", "server": server[0]} | body
    r = raw(controller, "POST", ASSETS, full, admin.token)
    assert r.status_code == 422, r.text
    assert "rm" not in r.json()["detail"].replace("form", "") and "CORP" not in r.json()["detail"]


def test_the_cli_adds_windows_assets_with_the_winrm_port(
    controller: LocalController,
    admin: AccountSession,
    unique: Unique,
    server: tuple[str, str],
    tmp_path: Path,
) -> None:
    profile = tmp_path / "admin.json"
    profile.write_text(
        json.dumps({"url": controller.url, "ca_pem": controller.ca_pem.decode(), "token": admin.token})
    )
    profile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env |= {"ZEROGATE_PROFILE": str(profile), "LC_ALL": "C.UTF-8", "COLUMNS": "400"}

    def add(*args: str) -> dict[str, Any]:
        argv = [sys.executable, "-m", "zerogate.cli.main", "admin", "segment", "asset", "add", *args]
        done = subprocess.run([*argv, "--server", server[0], "--json"], capture_output=True, text=True,
                              env=env, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    win = add(unique("win"), "--os", "windows", "--address", "10.77.1.1", "--user", "zgsvc@CORP.TEST")
    assert (win["os"], win["ssh_port"], win["ssh_user"]) == ("windows", 5986, "zgsvc@CORP.TEST")
    http = add(unique("win"), "--os", "windows", "--port", "5985", "--address", "10.77.1.2")
    assert (http["os"], http["ssh_port"]) == ("windows", 5985)
    linux = add(unique("lin"), "--address", "10.77.1.3")
    assert (linux["os"], linux["ssh_port"], linux["ssh_user"]) == ("linux", 22, "zerogate-segment")


def test_a_key_of_the_wrong_kind_is_never_pinned(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    """A Linux asset offering a certificate pin (a confused or hostile server) is not trusted:
    the snapshot could not carry it, and every asset of that server would stop."""
    name, credential = server
    host = unique("lin")
    added = ok(
        raw(controller, "POST", ASSETS, {"name": host, "address": "10.77.2.1", "server": name}, admin.token),
        201,
    )
    pin, fingerprint = certificate_pin()
    report = {"assets": [{"asset_id": added["id"], "state": "host_key_unknown", "observed_host_key": pin}]}
    ok(raw(controller, "POST", "/v1/segment/report", report, credential))
    refused = raw(controller, "POST", f"{ASSETS}/{host}/trust", {"fingerprint": fingerprint}, admin.token)
    assert refused.status_code == 422 and "wrong kind" in refused.json()["detail"]
    snapshot = parse_snapshot("segment", ok(raw(controller, "GET", "/v1/snapshot", token=credential)))
    assert next(a for a in snapshot.assets if a.name == host).host_key is None


def test_jit_ports_are_refused_on_a_windows_asset(
    controller: LocalController, admin: AccountSession, unique: Unique, server: tuple[str, str]
) -> None:
    host = unique("winjit")
    body = {"name": host, "address": "10.77.0.6", "server": server[0], "os": "windows", "ssh_user": "zgsvc"}
    ok(raw(controller, "POST", ASSETS, body, admin.token), 201)
    port = {"protocol": "tcp", "port": 3389, "users": ["admin"], "max_duration": 3600}
    r = raw(controller, "POST", f"{ASSETS}/{host}/jit-ports", port, admin.token)
    assert r.status_code == 422 and "Linux assets only" in r.json()["detail"], r.text
    assert ok(raw(controller, "GET", f"{ASSETS}/{host}/jit-ports", token=admin.token)) == []
