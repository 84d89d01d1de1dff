"""``zerogate admin``: sign in and manage the deployment through the API.

This module assembles the ``admin`` Typer app: the session commands from
:mod:`zerogate.cli.session` (profile file, bootstrap, login, ...), the object
sub-apps from :mod:`zerogate.cli.objects` (users, groups, sites, policies, ...),
``segment`` from :mod:`zerogate.cli.segment_admin`, and the rest, which lives here: provisioning keys, devices, API tokens, the
client address pool, policy explain and the audit log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from zerogate.cli import controllers_admin, flows, objects, report_history, segment_admin, session
from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say, show_audit_verification, visible
from zerogate.cli.session import client

app = typer.Typer(
    help="Sign in and manage users, groups, sites, applications and policy.", no_args_is_help=True
)


@app.callback()
def _options(
    profile: Path = typer.Option(
        None, "--profile", help="Session file (default ~/.config/zerogate/admin.json or $ZEROGATE_PROFILE)."
    ),
) -> None:
    session.use_profile(profile)


app.command()(session.bootstrap)
app.command()(session.activate)
app.command("totp-confirm")(session.totp_confirm)
app.command()(session.login)
app.command()(session.logout)
app.command()(session.whoami)
for _kind, _sub in objects.apps.items():
    app.add_typer(_sub, name=_kind)
app.add_typer(segment_admin.app, name="segment")
app.add_typer(controllers_admin.app, name="controller")
app.command("flows")(flows.flows)


def _table(path: str, columns: list[str], as_json: bool, params: dict[str, Any] | None = None) -> None:
    """GET a collection and print it as a table of ``columns`` (or as JSON)."""
    with errors_to_exit(), client() as c:
        emit(c.get(path, params), as_json, columns)


key_app = typer.Typer(
    help="Provisioning keys / install strings that enroll connectors, gateways and segment servers.",
    no_args_is_help=True,
)
app.add_typer(key_app, name="key")


@key_app.command("create")
def key_create(
    connector_group: str = typer.Option(None, "--connector-group", help="Enroll connectors into this group."),
    gateway: str = typer.Option(None, "--gateway", help="Enroll the host running this gateway."),
    segment_server: str = typer.Option(
        None, "--segment-server", help="Enroll the host running this segment server."
    ),
    ttl: int = typer.Option(None, "--ttl-minutes", help="Lifetime (default from the controller: 60)."),
    uses: int = typer.Option(1, "--max-uses", help="How many enrollments it allows."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    """Create a key and print its install string (shown once)."""
    targets = [
        (role, collection, name)
        for role, collection, name in (
            ("connector", "/v1/connector-groups", connector_group),
            ("gateway", "/v1/gateways", gateway),
            ("segment", "/v1/segment-servers", segment_server),
        )
        if name
    ]
    if len(targets) != 1:
        fail("give exactly one of --connector-group, --gateway or --segment-server")
    role, collection, name = targets[0]
    path = objects.item_path(collection, name)
    with errors_to_exit(), client() as c:
        r = c.post(
            f"{path}/provisioning-keys", {"ttl_minutes": ttl, "max_uses": uses, "description": description}
        )
    if as_json:
        emit(r, True)
        return
    say(
        "Install string for {} (valid until {}, {} use(s)); on the host, as root:",
        r["target"],
        r["expires_at"],
        r["max_uses"],
    )
    print(f"zerogate {role} enroll {visible(r['install_string'])}")


@key_app.command("list")
def key_list(as_json: bool = JsonOpt) -> None:
    _table(
        "/v1/provisioning-keys", ["id", "hint", "target", "state", "uses", "max_uses", "expires_at"], as_json
    )


@key_app.command("revoke")
def key_revoke(key_id: int) -> None:
    with errors_to_exit(), client() as c:
        c.delete(f"/v1/provisioning-keys/{key_id}")
        say("Provisioning key {} revoked.", key_id)


device_app = typer.Typer(
    help="Enrolled gateways, connectors, segment servers and client devices.", no_args_is_help=True
)
app.add_typer(device_app, name="device")
device_app.command("history")(report_history.device_history)


@device_app.command("list")
def device_list(
    role: str = typer.Option(None, "--role", help="gateway, connector, client or segment"),
    as_json: bool = JsonOpt,
) -> None:
    _table(
        "/v1/devices",
        ["id", "role", "name", "status", "online", "owner", "address", "last_seen_at"],
        as_json,
        {"role": role} if role else None,
    )


@app.command("status")
def status(
    role: str = typer.Option(None, "--role", help="Only gateway, connector, client or segment."),
    as_json: bool = JsonOpt,
) -> None:
    """Every active component online or offline (offline: three report intervals without
    a word), with its version and last sign of life, then what needs attention.
    Exit status 1 when anything is offline or needs attention (for scripts and checks)."""
    with errors_to_exit(), client() as c:
        found = c.get("/v1/status", {"role": role} if role else None)
    if as_json:
        emit(found, True)
    else:
        rows = [
            comp | {"state": "online" if comp["online"] else "OFFLINE", "age_s": comp["age_seconds"]}
            for comp in found["components"]
        ]
        emit(rows, False, ["role", "name", "state", "age_s", "version", "last_seen_at", "last_handshake_at"])
        tally = ", ".join(f"{n} {r}" for r, n in sorted(found["online"].items())) or "nothing"
        down = ", ".join(f"{n} {r}" for r, n in sorted(found["offline"].items())) or "nothing"
        say("revision {}: online {}; offline {}", found["revision"], tally, down)
        for comp in found["components"]:
            for item in comp["attention"]:
                say("[yellow]attention[/] {} {}: {}", comp["role"], comp["name"], item)
    if any(comp["attention"] for comp in found["components"]):
        raise typer.Exit(1)


@device_app.command("revoke")
def device_revoke(device_id: int, as_json: bool = JsonOpt) -> None:
    """Cut a device off: its credential stops working at once and gateways drop it."""
    with errors_to_exit(), client() as c:
        emit(c.post(f"/v1/devices/{device_id}/revoke"), as_json)


token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: str,
    ttl_days: int = typer.Option(30, "--ttl-days"),
    metrics: bool = typer.Option(
        False, "--metrics", help="A token that can read GET /metrics and nothing else (for Prometheus)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a token acting as you (shown once)."""
    body = {"name": name, "ttl_days": ttl_days, "kind": "metrics" if metrics else "api"}
    with errors_to_exit(), client() as c:
        emit(c.post("/v1/tokens", body), as_json)


@token_app.command("list")
def token_list(as_json: bool = JsonOpt) -> None:
    _table("/v1/tokens", ["id", "name", "kind", "hint", "username", "expires_at", "revoked_at"], as_json)


@token_app.command("revoke")
def token_revoke(token_id: int) -> None:
    with errors_to_exit(), client() as c:
        c.delete(f"/v1/tokens/{token_id}")
        say("Token {} revoked.", token_id)


@app.command("address-pool")
def address_pool(
    block: list[str] = typer.Option(
        [], "--block", help="Replace the blocks (first = default, rest alternates); repeat."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Show (or with --block, replace) the client address blocks."""
    with errors_to_exit(), client() as c:
        emit(c.put("/v1/address-pool", {"blocks": block}) if block else c.get("/v1/address-pool"), as_json)


@app.command()
def explain(
    username: str,
    destination: str,
    port: int = typer.Option(None, "--port"),
    protocol: str = typer.Option("tcp", "--protocol", help="tcp, udp or icmp"),
    as_json: bool = JsonOpt,
) -> None:
    """Would USERNAME reach DESTINATION? Names the deciding policy or the reason for denial."""
    with errors_to_exit(), client() as c:
        r = c.post(
            "/v1/policy/explain",
            {"username": username, "destination": destination, "port": port, "protocol": protocol},
        )
    if as_json:
        emit(r, True)
    else:
        say("[green]ALLOW[/] {}" if r["allowed"] else "[red]DENY[/] {}", r["reason"])


audit_app = typer.Typer(help="The append-only, hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("list")
def audit_list(
    after: int = typer.Option(0, "--after", help="Only records with a higher id."),
    limit: int = typer.Option(50, "--limit"),
    action: str = typer.Option(None, "--action"),
    as_json: bool = JsonOpt,
) -> None:
    params: dict[str, Any] = {"after_id": after, "limit": limit}
    if action:
        params["action"] = action
    _table(
        "/v1/audit", ["id", "at", "actor", "action", "object_type", "object_id", "outcome"], as_json, params
    )


@audit_app.command("verify")
def audit_verify(as_json: bool = JsonOpt) -> None:
    """Check the hash chain; exits 1 if any record was changed, deleted or cut off."""
    with errors_to_exit(), client() as c:
        r = c.get("/v1/audit/verify")
    if as_json:
        emit(r, True)
    else:
        show_audit_verification(r)
    if not r["ok"]:
        raise typer.Exit(1)
