"""``zerogate admin segment jit`` as an admin types it, against a real
controller: real subprocesses, ``--json`` parsed, tables and error lines read.
A segment server (enrolled over the API) forwards one user's request, so
there is an opening to list and revoke."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from apiaccess import raw
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController

# One engine: the module's only test is a long CLI flow (a process per command) whose
# API is covered on SQLite and PostgreSQL by tests/controller/test_segment_jit.py. This
# overrides the parameters of the shared `controller` fixture (tests/conftest.py).
pytestmark = pytest.mark.parametrize(
    "controller", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True, scope="module"
)

Unique = Callable[[str], str]
Run = Callable[..., subprocess.CompletedProcess[str]]
PASSWORD = "user password 12345"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def cli(controller: LocalController, admin: AccountSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`zerogate ...` with a profile holding the bootstrap admin's session (as 'admin login' saves it)."""
    profile = tmp_path_factory.mktemp("cli") / "admin.json"
    fd = os.open(profile, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "url": controller.url,
                "ca_pem": controller.ca_pem.decode(),
                "username": "admin",
                "token": admin.token,
            },
            f,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env |= {"LC_ALL": "C.UTF-8", "COLUMNS": "400", "ZEROGATE_PROFILE": str(profile)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "zerogate.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    return run


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def protected_asset(controller: LocalController, admin: AccountSession, unique: Unique) -> tuple[str, str]:
    """A protected asset of a newly enrolled segment server: (asset, server credential)."""
    server = unique("seg")
    ok(raw(controller, "POST", "/v1/segment-servers", {"name": server}, admin.token), 201)
    key = ok(raw(controller, "POST", f"/v1/segment-servers/{server}/provisioning-keys", {}, admin.token), 201)
    enrolled = ok(
        raw(
            controller,
            "POST",
            "/v1/enroll",
            {
                "key": key["key"],
                "name": server,
                "csr": create_csr(generate_private_key(), server).decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    )
    body = {"name": unique("host"), "address": "10.78.0.5", "server": server}
    made = ok(raw(controller, "POST", "/v1/segment/assets", body, admin.token), 201)
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)
    report = {
        "assets": [
            {
                "asset_id": made["id"],
                "state": "host_key_unknown",
                "observed_host_key": "ssh-ed25519 " + base64.b64encode(blob).decode(),
            }
        ]
    }
    ok(raw(controller, "POST", "/v1/segment/report", report, enrolled["credential"]))
    path = f"/v1/segment/assets/{made['name']}"
    fingerprint = ok(raw(controller, "GET", path, token=admin.token))["observed_host_key_fingerprint"]
    ok(raw(controller, "POST", f"{path}/trust", {"fingerprint": fingerprint}, admin.token))
    ok(raw(controller, "POST", f"{path}/mode", {"mode": "learning", "window_seconds": 60}, admin.token))
    rule = {"protocol": "tcp", "port_first": 443, "sources": ["10.0.0.0/8"]}
    ok(raw(controller, "POST", f"{path}/rules", rule, admin.token), 201)
    ok(raw(controller, "POST", f"{path}/mode", {"mode": "protected"}, admin.token))
    return made["name"], enrolled["credential"]


def test_ports_and_openings_from_the_command_line(
    cli: Run, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    asset, credential = protected_asset(controller, admin, unique)
    group = unique("grp")
    ok(raw(controller, "POST", "/v1/groups", {"name": group}, admin.token), 201)
    username = unique("u")
    created = ok(
        raw(controller, "POST", "/v1/users", {"username": username, "groups": [group]}, admin.token), 201
    )
    authenticator = controller.activate_account(username, created["activation_code"], PASSWORD)

    added = ok_json(cli(
        "admin", "segment", "jit", "port", "add", asset, "22", "--group", group,
        "--source", "198.51.100.0/24", "--max-duration", "4h", "--json",
    ))  # fmt: skip
    assert (added["port"], added["protocol"], added["groups"], added["max_duration"]) == (
        22,
        "tcp",
        [group],
        14400,
    )
    bad = cli(
        "admin", "segment", "jit", "port", "add", asset, "23", "--group", group, "--max-duration", "soon"
    )
    assert bad.returncode == 1 and "--max-duration: expected" in one_line(bad.stderr) and bad.stdout == ""
    odd = cli("admin", "segment", "jit", "port", "add", asset, "23", "--group", group, "--max-duration", "2h")
    assert odd.returncode == 1 and "allowed durations" in one_line(odd.stderr) and "(HTTP 422)" in odd.stderr
    twice = cli("admin", "segment", "jit", "port", "add", asset, "22", "--group", group)
    assert twice.returncode == 1 and "(HTTP 409)" in one_line(twice.stderr)
    ok_json(
        cli(
            "admin",
            "segment",
            "jit",
            "port",
            "add",
            asset,
            "53",
            "--protocol",
            "udp",
            "--user",
            username,
            "--json",
        )
    )
    listed = ok_json(cli("admin", "segment", "jit", "port", "list", asset, "--json"))
    assert [(p["protocol"], p["port"]) for p in listed] == [("tcp", 22), ("udp", 53)]
    table = cli("admin", "segment", "jit", "port", "list", asset)
    assert table.returncode == 0 and "198.51.100.0/24" in table.stdout

    body = {
        "username": username,
        "password": PASSWORD,
        "totp": authenticator.code(),
        "source": "198.51.100.7",
        "asset": asset,
        "protocol": "tcp",
        "port": 22,
        "duration": 3600,
    }
    opened = ok(raw(controller, "POST", "/v1/segment/jit-requests", body, credential), 201)
    openings = ok_json(cli("admin", "segment", "jit", "list", "--asset", asset, "--json"))
    assert [(o["id"], o["user"], o["source"], o["state"]) for o in openings] == [
        (opened["opening_id"], username, "198.51.100.7", "active")
    ]
    revoked = cli("admin", "segment", "jit", "revoke", str(opened["opening_id"]))
    assert revoked.returncode == 0, revoked.stderr
    assert f"Revoked opening {opened['opening_id']} (198.51.100.7 to {asset} tcp/22)" in one_line(
        revoked.stdout
    )
    assert ok_json(cli("admin", "segment", "jit", "list", "--asset", asset, "--json")) == []
    every = ok_json(cli("admin", "segment", "jit", "list", "--asset", asset, "--all", "--json"))
    assert [o["state"] for o in every] == ["revoked"]
    again = cli("admin", "segment", "jit", "revoke", str(opened["opening_id"]))
    assert again.returncode == 1 and "already revoked" in one_line(again.stderr)

    removed = cli("admin", "segment", "jit", "port", "remove", asset, "53", "--protocol", "udp")
    assert removed.returncode == 0 and "Removed JIT port udp/53" in one_line(removed.stdout)
    assert [p["port"] for p in ok_json(cli("admin", "segment", "jit", "port", "list", asset, "--json"))] == [
        22
    ]
    missing = cli("admin", "segment", "jit", "port", "remove", asset, "53", "--protocol", "udp")
    assert missing.returncode == 1 and "(HTTP 404)" in missing.stderr
    assert ok_json(cli("admin", "segment", "jit", "list", "--asset", "no-such-host", "--all", "--json")) == []
