"""``zerogate admin`` and ``zerogate controller`` as an admin types them: real
subprocesses, a real sign-in (password on stdin, TOTP from the authenticator),
``--json`` output parsed, exit codes and error lines checked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from apiaccess import raw
from dbaccess import run_sql
from zerogate.cli.common import safe
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.install_string import parse_install_string
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, Authenticator, LocalController

Unique = Callable[[str], str]
Run = Callable[..., subprocess.CompletedProcess[str]]


def zerogate(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerogate.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    # A wide "terminal", so rich does not wrap messages inside paths.
    return env | {"LC_ALL": "C.UTF-8", "COLUMNS": "400", **extra}


def one_line(text: str) -> str:
    """Rich wraps long lines at the terminal width; compare messages unwrapped."""
    return " ".join(text.split())


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory, controller: LocalController) -> Path:
    """One per controller: 'admin activate' keeps a profile that holds another controller's session."""
    return tmp_path_factory.mktemp("cli") / "admin.json"


@pytest.fixture(scope="module")
def cli(controller: LocalController, admin: AccountSession, profile: Path) -> Iterator[Run]:
    """`zerogate ...` with a profile signed in as a second admin, onboarded with the CLI.

    The bootstrap admin's authenticator has used up the current TOTP steps
    (codes are single-use), so signing in with it again would wait for the
    next 30 s step; a new admin goes activate -> totp-confirm -> login at once.
    """
    env = clean_env(ZEROGATE_PROFILE=str(profile))
    username, password = "cli-admin", "cli admin password 12345"
    code = admin.client.post("/v1/admins", {"username": username})["activation_code"]

    activated = zerogate(
        "admin", "activate", "--url", controller.url, "--pin", controller.ca_pin,
        "--username", username, "--code", code, "--password-stdin", "--json",
        env=env, stdin=password + "\n",
    )  # fmt: skip
    authenticator = Authenticator(ok_json(activated)["totp_secret"])
    confirmed = zerogate(
        "admin", "totp-confirm", "--username", username, "--totp", authenticator.code(), "--password-stdin",
        env=env, stdin=password + "\n",
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stderr
    login = zerogate(
        "admin", "login", "--url", controller.url, "--pin", controller.ca_pin,
        "--username", username, "--totp", authenticator.code(), "--password-stdin",
        env=env, stdin=password + "\n",
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert f"Signed in as {username} (admin)" in one_line(login.stdout)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return zerogate(*args, env=env, stdin=stdin)

    yield run
    # An open kept-alive connection would make the controller's shutdown wait 5 s.
    admin.client.close()


# ----------------------------------------------------------------- signed in


def test_login_keeps_a_private_session(cli: Run, profile: Path, controller: LocalController) -> None:
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    saved = json.loads(profile.read_text())
    assert saved["url"] == controller.url and saved["token"].startswith("zgt_")
    whoami = ok_json(cli("admin", "whoami", "--json"))
    assert (whoami["kind"], whoami["name"], whoami["mfa"]) == ("admin", "cli-admin", True)


def test_group_create_list_show(cli: Run, unique: Unique) -> None:
    name = unique("eng")
    created = ok_json(cli("admin", "group", "create", name, "--description", "Engineering", "--json"))
    assert (created["name"], created["description"], created["members"]) == (name, "Engineering", [])
    listed = ok_json(cli("admin", "group", "list", "--json"))
    assert [g for g in listed if g["name"] == name] == [created]
    assert ok_json(cli("admin", "group", "show", name, "--json"))["description"] == "Engineering"


def test_group_add_and_remove_member(cli: Run, admin: AccountSession, unique: Unique) -> None:
    ann, bob = (admin.client.post("/v1/users", {"username": unique(n)})["username"] for n in ("ann", "bob"))
    group = admin.client.post("/v1/groups", {"name": unique("ops"), "members": [ann]})["name"]

    added = ok_json(cli("admin", "group", "add-member", group, ann, bob, "--json"))
    assert added == {"name": group, "added": [bob], "removed": [], "member_count": 2}
    removed = cli("admin", "group", "remove-member", group, ann)
    assert removed.returncode == 0, removed.stderr
    assert one_line(removed.stdout) == f"Group {group}: -{ann}; it has 1 member(s)."
    assert admin.client.get(f"/v1/groups/{group}")["members"] == [bob]

    unknown = cli("admin", "group", "add-member", group, "nobody-at-all")
    assert (unknown.returncode, one_line(unknown.stderr)) == (
        1,
        "error: no user named 'nobody-at-all' (HTTP 404)",
    )


# ESC [2J clears the screen; NUL and BEL are invisible; the markup would be
# rendered as colour and a clickable link. PostgreSQL text cannot hold NUL.
_ESC, _NUL, _BEL = "\x1b", "\x00", "\x07"
_MARKUP = "[red]x[/] [link=https://evil.example]click[/link]"


def _plant_display_name(controller: LocalController, username: str) -> str:
    """Write a hostile display name straight into the database (the API refuses it)."""
    sqlite = not controller.database
    char = "char" if sqlite else "chr"
    nul = f" || {char}(0)" if sqlite else ""
    run_sql(
        controller,
        f"UPDATE accounts SET display_name = 'evil' || {char}(27) || '[2J'{nul} || {char}(7) "
        f"|| '{_MARKUP}' WHERE username = '{username}'",
    )
    return "evil" + _ESC + "[2J" + (_NUL if sqlite else "") + _BEL + _MARKUP


def test_hostile_names_are_printed_harmlessly(
    cli: Run, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    username = admin.client.post("/v1/users", {"username": unique("mallory")})["username"]
    planted = _plant_display_name(controller, username)
    assert admin.client.get(f"/v1/users/{username}")["display_name"] == planted  # the server sends it as is

    for args in (["admin", "user", "list"], ["admin", "user", "show", username]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert not {_ESC, _NUL, _BEL} & set(result.stdout), args
        # Made visible, and the markup printed as text, not interpreted.
        assert "evil\\x1b[2J" in result.stdout and "\\x07" in result.stdout
        assert _MARKUP in result.stdout, result.stdout

    as_json = cli("admin", "user", "show", username, "--json")
    assert not {_ESC, _NUL, _BEL} & set(as_json.stdout)
    assert ok_json(as_json)["display_name"] == planted  # escaped in JSON, not lost


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # "[2J" is no markup tag; its ESC is what did harm
        ("nul\x00", "nul\\x00"),
        ("bidi\u202e", "bidi\\u202e"),
        ("[bold]x[/bold]", "\\[bold]x\\[/bold]"),
        ("trailing\\", "trailing\\\\"),  # would otherwise escape the template's closing tag
        ("plain text", "plain text"),
    ],
    ids=["esc", "nul", "bidi-override", "markup", "trailing-backslash", "plain"],
)
def test_safe_makes_values_inert_in_markup(value: str, shown: str) -> None:
    assert safe(value) == shown


def test_site_application_policy(cli: Run, admin: AccountSession, unique: Unique) -> None:
    site, app, policy = unique("site"), unique("wiki"), unique("staff-wiki")
    group = admin.client.post("/v1/groups", {"name": unique("staff")})["name"]

    created = ok_json(cli(
        "admin", "connector-group", "create", site, "--subnet", "10.77.1.0/24", "--subnet", "10.77.2.0/24",
        "--no-snat", "--vrrp-virtual-ip", "10.77.1.1", "--json",
    ))  # fmt: skip
    assert (created["subnets"], created["snat"], created["vrrp_virtual_ip"]) == (
        ["10.77.1.0/24", "10.77.2.0/24"],
        False,
        "10.77.1.1",
    )
    assert site in [g["name"] for g in ok_json(cli("admin", "connector-group", "list", "--json"))]

    created = ok_json(cli(
        "admin", "application", "create", app, "--connector-group", site,
        "--dest", "tcp:10.77.1.10:80,443", "--dest", "icmp:10.77.2.0/24", "--json",
    ))  # fmt: skip
    assert created["connector_group"] == site
    assert created["destinations"] == [
        {"address": "10.77.1.10/32", "protocol": "tcp", "ports": ["80", "443"]},
        {"address": "10.77.2.0/24", "protocol": "icmp", "ports": []},
    ]
    shown = ok_json(cli("admin", "application", "show", app, "--json"))
    assert shown["destinations"] == created["destinations"]

    created = ok_json(cli(
        "admin", "policy", "create", policy, "--group", group, "--app", app,
        "--window", "mon-fri 08:00-18:00 Europe/Berlin", "--require-mfa", "--json",
    ))  # fmt: skip
    assert (created["groups"], created["applications"], created["require_mfa"], created["enabled"]) == (
        [group],
        [app],
        True,
        True,
    )
    window = {"days": [0, 1, 2, 3, 4], "start": "08:00", "end": "18:00", "tz": "Europe/Berlin"}
    assert created["time_window"] == window
    listed = ok_json(cli("admin", "policy", "list", "--json"))
    assert next(p for p in listed if p["name"] == policy)["time_window"] == window
    assert ok_json(cli("admin", "policy", "show", policy, "--json"))["applications"] == [app]


def test_explain(cli: Run, controller: LocalController, admin: AccountSession, unique: Unique) -> None:
    c = admin.client
    group = c.post("/v1/groups", {"name": unique("ops")})["name"]
    site = c.post("/v1/connector-groups", {"name": unique("site"), "subnets": ["10.78.0.0/24"]})["name"]
    app = c.post(
        "/v1/applications",
        {"name": unique("ssh"), "connector_group": site,
         "destinations": [{"address": "10.78.0.5", "protocol": "tcp", "ports": ["22"]}]},
    )["name"]  # fmt: skip
    policy = c.post("/v1/policies", {"name": unique("ops-ssh"), "groups": [group], "applications": [app]})[
        "name"
    ]
    user = controller.create_user(admin, unique("frank"), [group])
    user.client.close()  # only its account matters here

    allowed = ok_json(cli("admin", "explain", user.username, "10.78.0.5", "--port", "22", "--json"))
    assert (allowed["allowed"], allowed["policy"]) == (True, policy)
    denied = cli("admin", "explain", user.username, "10.78.0.5", "--port", "80")
    assert denied.returncode == 0, denied.stderr
    assert one_line(denied.stdout).startswith("DENY")


def test_key_create_prints_an_install_string_that_enrolls(
    cli: Run, controller: LocalController, admin: AccountSession, unique: Unique, tmp_path: Path
) -> None:
    site = admin.client.post("/v1/connector-groups", {"name": unique("site"), "subnets": ["10.79.0.0/24"]})
    made = cli("admin", "key", "create", "--connector-group", site["name"], "--ttl-minutes", "15")
    assert made.returncode == 0, made.stderr
    commands = [
        line for line in made.stdout.splitlines() if line.startswith("zerogate connector enroll zg1.")
    ]
    assert len(commands) == 1, made.stdout
    install = parse_install_string(commands[0].split()[-1])
    assert (install.controller_url, install.ca_pin) == (controller.url, controller.ca_pin)

    # Paste it on the "host", as the output tells you to.
    name = unique("fra-conn")
    state_dir = tmp_path / "connector"
    enrolled = ok_json(cli(*commands[0].split()[1:], "--name", name, "--state-dir", str(state_dir), "--json"))
    assert (enrolled["role"], enrolled["name"]) == ("connector", name)
    assert stat.S_IMODE((state_dir / "credential").stat().st_mode) == 0o600
    connectors = ok_json(cli("admin", "connector", "list", "--json"))
    assert next(c for c in connectors if c["name"] == name)["connector_group"] == site["name"]


def test_connector_with_symbols_in_its_name(
    cli: Run, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    site = admin.client.post("/v1/connector-groups", {"name": unique("site"), "subnets": ["10.81.0.0/24"]})
    key = admin.client.post(f"/v1/connector-groups/{site['name']}/provisioning-keys", {})
    name = f"{unique('fra')} rack #3?"
    with controller.client() as anonymous:
        anonymous.post(
            "/v1/enroll",
            {
                "key": key["key"],
                "name": name,
                "csr": create_csr(generate_private_key(), "connector").decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    shown = cli("admin", "connector", "show", name, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == name


def test_connector_list_shows_the_tunnel_and_what_to_check(
    cli: Run, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    site = admin.client.post("/v1/connector-groups", {"name": unique("site"), "subnets": ["10.82.0.0/24"]})
    key = admin.client.post(f"/v1/connector-groups/{site['name']}/provisioning-keys", {"max_uses": 2})
    down, quiet = unique("cn-down"), unique("cn-quiet")
    for name in (down, quiet):
        body = {"key": key["key"], "name": name, "wg_public_key": generate_keypair()[1]}
        body["csr"] = create_csr(generate_private_key(), "connector").decode()
        with controller.client() as anonymous:
            credential = anonymous.post("/v1/enroll", body)["credential"]
    hint = "no handshake: check that UDP to [gw-1] 203.0.113.7 ports 51820-53000 gets out"
    report = {
        "version": "0.1.0",
        "interface": "zg-cn",
        "details": {
            "tunnel_up": False,
            "last_handshake_at": "2026-05-01T12:00:00+00:00",
            "tunnel_hint": hint,
        },
    }
    with controller.client(credential) as device:  # the last one enrolled: quiet
        device.post("/v1/report", report)

    table = cli("admin", "connector", "list")
    assert table.returncode == 0, table.stderr
    cells = [re.split("[│┃]", line) for line in table.stdout.splitlines()]
    rows = {c[1].strip(): "|".join(c) for c in cells if len(c) > 4}
    assert "tunnel" in rows["name"] and "last_handshake_at" in rows["name"]
    assert "down" in rows[quiet] and "2026-05-01T12:00:00Z" in rows[quiet]
    assert "unknown" in rows[down]
    said = one_line(table.stdout)
    assert f"{quiet} tunnel down: {hint}" in said  # brackets and all
    assert f"{down} tunnel unknown: it has not reported yet" in said
    listed = {c["name"]: c for c in ok_json(cli("admin", "connector", "list", "--json"))}
    assert (listed[quiet]["tunnel"], listed[quiet]["tunnel_hint"]) == ("down", hint)


def test_activate_keeps_the_session_and_totp_confirm_says_how_a_user_signs_in(
    cli: Run, profile: Path, controller: LocalController, admin: AccountSession, unique: Unique
) -> None:
    username, password = unique("erin"), "erin's long password 12345"
    code = admin.client.post("/v1/users", {"username": username})["activation_code"]
    activated = ok_json(cli(
        "admin", "activate", "--url", controller.url, "--pin", controller.ca_pin,
        "--username", username, "--code", code, "--password-stdin", "--json", stdin=password + "\n",
    ))  # fmt: skip
    assert activated["next_step"] == f"zerogate admin totp-confirm --username {username} --totp CODE"
    assert ok_json(cli("admin", "whoami", "--json"))["name"] == "cli-admin"  # still signed in

    confirmed = cli(
        "admin", "totp-confirm", "--username", username, "--password-stdin",
        "--totp", Authenticator(activated["totp_secret"]).code(), stdin=password + "\n",
    )  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stderr
    said = one_line(confirmed.stdout)
    assert (
        f"Sign in: zerogate client login --url {controller.url} --pin {controller.ca_pin} --username {username}"
        in said
    ), said
    assert "admin login" not in said


def test_activate_refuses_a_profile_signed_in_elsewhere_before_using_the_code(
    controller: LocalController, admin: AccountSession, unique: Unique, tmp_path: Path
) -> None:
    elsewhere = {"url": "https://zt.example.com", "ca_pem": "x", "username": "root", "token": "zgt_x"}
    other = tmp_path / "admin.json"
    other.write_text(json.dumps(elsewhere))
    username = unique("fay")
    code = admin.client.post("/v1/users", {"username": username})["activation_code"]
    args = ["admin", "activate", "--url", controller.url, "--pin", controller.ca_pin]
    args += ["--username", username, "--code", code, "--password-stdin", "--json"]
    refused = zerogate(*args, env=clean_env(ZEROGATE_PROFILE=str(other)), stdin="fay's long password 12345\n")
    assert refused.returncode == 1
    assert f"{other} holds the session of root on https://zt.example.com" in one_line(refused.stderr)
    assert json.loads(other.read_text()) == elsewhere
    fresh = clean_env(ZEROGATE_PROFILE=str(tmp_path / "fay.json"))
    ok_json(zerogate(*args, env=fresh, stdin="fay's long password 12345\n"))  # the code is still good


def test_audit_verify(cli: Run) -> None:
    verdict = cli("admin", "audit", "verify")
    assert verdict.returncode == 0, verdict.stderr
    assert "audit chain intact" in one_line(verdict.stdout)
    audit = ok_json(cli("admin", "audit", "list", "--action", "login", "--json"))
    assert audit and all(r["action"] == "login" for r in audit)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["admin", "group", "show", "nope-group"], "no group named 'nope-group' (HTTP 404)"),
        (
            ["admin", "connector-group", "create", "bad-site", "--subnet", "10.80.0.1/24"],
            "'10.80.0.1/24' has host bits set; did you mean 10.80.0.0/24? (HTTP 422)",
        ),
        (
            [
                "admin",
                "policy",
                "create",
                "p",
                "--group",
                "g",
                "--app",
                "a",
                "--window",
                "mon 08:00-09:00 Mars/Base",
            ],
            "unknown time zone 'Mars/Base'",
        ),
    ],
    ids=["unknown-name", "host-bits", "unknown-time-zone"],
)
def test_server_error_exits_1_with_its_message(cli: Run, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("error:")
    assert message in one_line(result.stderr)
    assert result.stdout == ""


def _segment_report(controller: LocalController, credential: str, body: dict[str, Any]) -> None:
    r = raw(controller, "POST", "/v1/segment/report", body, credential)
    assert r.status_code == 200, r.text


def test_segment_operator_flow(
    cli: Run, controller: LocalController, unique: Unique, request: pytest.FixtureRequest
) -> None:
    # About 30 commands, each a fresh process: run once, on the stricter engine. The same
    # API on SQLite is covered by tests/controller/test_segment_api.py, and the other
    # tests in this module keep the CLI itself covered against both.
    if request.node.callspec.params["controller"] == "sqlite":
        pytest.skip("the long segment CLI flow runs on PostgreSQL; test_segment_api.py covers SQLite")
    server = unique("seg")
    assert ok_json(cli("admin", "segment", "server", "create", server, "--json"))["status"] == "not enrolled"
    made = cli("admin", "key", "create", "--segment-server", server)
    assert made.returncode == 0, made.stderr
    commands = [line for line in made.stdout.splitlines() if line.startswith("zerogate segment enroll zg1.")]
    assert len(commands) == 1, made.stdout
    install = parse_install_string(commands[0].split()[-1])
    with controller.client() as anonymous:
        enrolled = anonymous.post(
            "/v1/enroll",
            {
                "key": install.key,
                "name": server,
                "csr": create_csr(generate_private_key(), server).decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    credential = enrolled["credential"]
    listed = ok_json(cli("admin", "segment", "server", "list", "--json"))
    assert next(x for x in listed if x["name"] == server)["status"] == "active"

    host = unique("web")
    added = ok_json(
        cli("admin", "segment", "asset", "add", host, "--server", server, "--address", "10.91.0.5", "--json")
    )
    assert (added["mode"], added["ssh_port"], added["host_key_fingerprint"]) == ("monitored", 22, None)
    key_blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + os.urandom(32)
    key = "ssh-ed25519 " + base64.b64encode(key_blob).decode()
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(key_blob).digest()).decode().rstrip("=")
    _segment_report(
        controller,
        credential,
        {"assets": [{"asset_id": added["id"], "state": "host_key_unknown", "observed_host_key": key}]},
    )
    wrong = cli("admin", "segment", "asset", "trust", host, "SHA256:" + "B" * 43)
    assert wrong.returncode == 1 and "not the key" in one_line(wrong.stderr) and wrong.stdout == ""
    trusted = cli("admin", "segment", "asset", "trust", host, fingerprint)
    assert trusted.returncode == 0, trusted.stderr
    assert f"Pinned host key {fingerprint}" in one_line(trusted.stdout)

    bad = cli("admin", "segment", "learn", host, "--for", "soon")
    assert bad.returncode == 1 and "expected a duration" in one_line(bad.stderr)
    learning = ok_json(cli("admin", "segment", "learn", host, "--for", "30s", "--json"))
    assert learning["mode"] == "learning"
    assert ok_json(cli("admin", "segment", "extend", host, "--for", "1m", "--json"))["learning_until"]
    refused = cli("admin", "segment", "protect", host)
    assert refused.returncode == 1 and "no approved accept rule" in one_line(refused.stderr)

    now = datetime.now(UTC).isoformat()
    flows = [
        {"protocol": "tcp", "direction": "inbound", "local_port": port, "peer": peer, "process": "nginx",
         "first_seen": now, "last_seen": now, "count": 2}
        for port, peer in ((443, "10.91.1.7"), (8080, "198.51.100.9"))
    ]  # fmt: skip
    _segment_report(
        controller, credential, {"assets": [{"asset_id": added["id"], "state": "learning", "flows": flows}]}
    )
    proposed = ok_json(cli("admin", "segment", "rules", "propose", host, "--json"))["proposed"]
    by_port = {r["port_first"]: r["id"] for r in proposed}
    simulated = cli("admin", "segment", "simulate", host, "--rule", str(by_port[443]))
    assert simulated.returncode == 0, simulated.stderr
    lines = [one_line(line) for line in simulated.stdout.splitlines()]
    assert "ALLOW 10.91.1.7" in lines and "BLOCK 198.51.100.9: tcp/8080 x2" in lines
    approved = ok_json(cli("admin", "segment", "rules", "approve", host, str(by_port[443]), "--json"))
    assert approved[0]["status"] == "approved"
    edited = ok_json(cli(
        "admin", "segment", "rules", "edit", host, str(by_port[8080]), "--ports", "8080-8081",
        "--source", "198.51.100.0/24", "--json",
    ))  # fmt: skip
    assert (edited["status"], edited["port_last"], edited["sources"]) == (
        "approved",
        8081,
        ["198.51.100.0/24"],
    )
    rules = ok_json(cli("admin", "segment", "rules", "list", host, "--json"))
    assert {r["status"] for r in rules} == {"approved"}

    assert ok_json(cli("admin", "segment", "protect", host, "--json"))["mode"] == "protected"
    jump = cli("admin", "segment", "jump-hosts", "--set", "192.0.2.0/29")
    assert jump.returncode == 0 and "192.0.2.0/29" in jump.stdout
    still = cli("admin", "segment", "asset", "remove", host)
    assert still.returncode == 1 and "unprotect it first" in one_line(still.stderr)
    unprotected = cli("admin", "segment", "unprotect", host)
    assert unprotected.returncode == 0 and "is now monitored" in one_line(unprotected.stdout)
    shown = ok_json(cli("admin", "segment", "asset", "show", host, "--json"))
    assert (shown["host_key_fingerprint"], shown["flows"], shown["rules"]["approved"]) == (fingerprint, 2, 2)
    assert cli("admin", "segment", "asset", "remove", host).returncode == 0
    assert host not in [a["name"] for a in ok_json(cli("admin", "segment", "asset", "list", "--json"))]
    hostile = cli(
        "admin", "segment", "asset", "add", "web\x1b[31m", "--server", server, "--address", "10.91.0.6"
    )
    assert (
        hostile.returncode == 1 and "\x1b" not in hostile.stderr and "(HTTP 422)" in one_line(hostile.stderr)
    )
    cli("admin", "segment", "jump-hosts", "--clear")


# ----------------------------------------------------------------- no controller needed


def test_not_signed_in(tmp_path: Path) -> None:
    result = zerogate("admin", "group", "list", env=clean_env(ZEROGATE_PROFILE=str(tmp_path / "none.json")))
    assert result.returncode == 1
    assert "error: not signed in" in one_line(result.stderr)


@pytest.mark.parametrize(
    "group",
    [
        [], ["admin"], ["admin", "admin"], ["admin", "user"], ["admin", "group"], ["admin", "connector-group"],
        ["admin", "connector"], ["admin", "gateway"], ["admin", "application"], ["admin", "policy"],
        ["admin", "key"], ["admin", "device"], ["admin", "token"], ["admin", "audit"], ["controller"],
        ["connector"], ["gateway"], ["admin", "segment"], ["admin", "segment", "server"],
        ["admin", "segment", "asset"], ["admin", "segment", "rules"], ["admin", "segment", "learn"],
    ],
    ids=lambda g: " ".join(g) or "zerogate",
)  # fmt: skip
def test_help(group: list[str]) -> None:
    result = zerogate(*group, "--help", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "--help" in result.stdout


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    # Brackets in the path: it must print as it is, not be taken for Rich markup.
    data_dir = tmp_path_factory.mktemp("deployment") / "[bold]data"
    init = zerogate(
        "controller",
        "init",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--json",
        env=clean_env(),
    )
    return data_dir, ok_json(init)


def test_controller_init_and_check(deployment: tuple[Path, dict[str, Any]]) -> None:
    data_dir, info = deployment
    assert info["ca_pin"].startswith("sha256/") and info["bootstrap_code"]
    assert info["data_dir"] == str(data_dir) and info["database"].startswith("sqlite")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    check = zerogate("controller", "run", "--check", "--data-dir", str(data_dir), env=clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    assert one_line(check.stdout).startswith(f"OK configuration in {data_dir} is valid")


def test_controller_check_on_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    check = zerogate("controller", "run", "--check", "--data-dir", str(missing), env=clean_env())
    assert check.returncode == 1
    said = one_line(check.stdout + check.stderr)
    assert f"{missing / 'controller.toml'} is missing" in said and "zerogate controller init" in said
    assert not missing.exists()


def test_controller_init_refuses_an_existing_deployment(deployment: tuple[Path, dict[str, Any]]) -> None:
    data_dir, _ = deployment
    before = _tree(data_dir)
    again = zerogate("controller", "init", "--data-dir", str(data_dir), "--json", env=clean_env())
    assert again.returncode == 1
    assert "already holds a deployment" in one_line(again.stderr) and again.stdout == ""
    assert _tree(data_dir) == before


def test_controller_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not yours\n")
    (tmp_path / "sub").mkdir()
    before = _tree(tmp_path)
    result = zerogate("controller", "init", "--data-dir", str(tmp_path), env=clean_env())
    assert result.returncode == 1
    said = one_line(result.stderr)
    assert said.startswith("error:") and "is not empty" in said
    assert _tree(tmp_path) == before
