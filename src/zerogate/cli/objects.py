"""``zerogate admin`` object commands: admins, users, groups, sites, gateways, apps, policies.

Every kind in :data:`RESOURCES` gets the same generic sub-app (list, show, delete,
update with ``--set FIELD=VALUE``); the kinds whose creation needs more than a
name add their own ``create`` here, parsing flags such as ``--dest`` and
``--window`` into the API's shapes (:func:`parse_destination`,
:func:`parse_window`). :data:`apps` holds the sub-apps in order;
:mod:`zerogate.cli.admin` mounts them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.cli.session import client

# name: (API path, key field, table columns)
RESOURCES: dict[str, tuple[str, str, list[str]]] = {
    "admin": ("/v1/admins", "username", ["username", "status", "totp_enrolled", "created_at"]),
    "user": ("/v1/users", "username", ["username", "display_name", "status", "groups"]),
    "group": ("/v1/groups", "name", ["name", "description", "members"]),
    "connector-group": (
        "/v1/connector-groups",
        "name",
        ["name", "subnets", "snat", "vrrp_virtual_ip", "mode", "connectors"],
    ),
    "connector": (
        "/v1/connectors",
        "name",
        [
            "name",
            "connector_group",
            "status",
            "draining",
            "tunnel",
            "last_handshake_at",
            "last_seen_at",
            "location",
        ],
    ),
    "gateway": ("/v1/gateways", "name", ["name", "public_endpoint", "port_first", "port_last", "status"]),
    "application": ("/v1/applications", "name", ["name", "connector_group", "destinations"]),
    "policy": (
        "/v1/policies",
        "name",
        ["name", "groups", "applications", "require_mfa", "time_window", "enabled"],
    ),
}


def item_path(collection: str, name: str) -> str:
    """The API path of one object: its name quoted as one path segment."""
    return f"{collection}/{quote(name, safe='')}"


def _tunnel_hints(connectors: list[dict[str, Any]]) -> None:
    """Under the connector table: what to check for each tunnel that is not up."""
    for c in connectors:
        if c.get("tunnel") != "up" and c.get("tunnel_hint"):
            say("[yellow]{}[/] tunnel {}: {}", c.get("name"), c.get("tunnel"), c["tunnel_hint"])


def _delete(kind: str, name: str) -> None:
    with errors_to_exit(), client() as c:
        c.delete(item_path(RESOURCES[kind][0], name))


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set FIELD=VALUE`` options as a PATCH body; a VALUE that is not JSON is a string."""
    body: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            fail(f"--set {item!r}: expected FIELD=VALUE")
        try:
            body[field] = json.loads(raw)
        except ValueError:
            body[field] = raw
    if not body:
        fail("nothing to change: pass --set FIELD=VALUE")
    return body


def _resource_app(kind: str) -> typer.Typer:
    path, key, columns = RESOURCES[kind]
    sub = typer.Typer(help=f"Manage {kind.replace('policy', 'policie')}s.", no_args_is_help=True)

    @sub.command("list")
    def list_(as_json: bool = JsonOpt) -> None:
        with errors_to_exit(), client() as c:
            rows = c.get(path)
        emit(rows, as_json, columns)
        if kind == "connector" and not as_json:
            _tunnel_hints(rows)

    @sub.command("show")
    def show(name: str = typer.Argument(..., help=f"The {kind}'s {key}."), as_json: bool = JsonOpt) -> None:
        with errors_to_exit(), client() as c:
            emit(c.get(item_path(path, name)), as_json)

    @sub.command("delete")
    def delete(name: str = typer.Argument(..., help=f"The {kind}'s {key}.")) -> None:
        _delete(kind, name)
        say("Deleted {} {}.", kind, name)

    @sub.command("update")
    def update(
        name: str = typer.Argument(..., help=f"The {kind}'s {key}."),
        set_: list[str] = typer.Option(
            [], "--set", help="FIELD=VALUE; VALUE may be JSON (lists, true/false, numbers). Repeat."
        ),
        as_json: bool = JsonOpt,
    ) -> None:
        """Change fields, e.g. --set description="lab" --set 'subnets=["10.1.0.0/24"]'."""
        body = _parse_set(set_)
        with errors_to_exit(), client() as c:
            emit(c.patch(item_path(path, name), body), as_json)

    return sub


apps: dict[str, typer.Typer] = {kind: _resource_app(kind) for kind in RESOURCES}


def _create(kind: str, body: dict[str, Any], as_json: bool) -> dict[str, Any]:
    path = RESOURCES[kind][0]
    with errors_to_exit(), client() as c:
        result: dict[str, Any] = c.post(path, body)
    emit(result, as_json)
    return result


def _account_commands(kind: str) -> None:
    @apps[kind].command("create")
    def create(
        username: str,
        display_name: str = typer.Option("", "--display-name"),
        email: str = typer.Option("", "--email"),
        group: list[str] = typer.Option([], "--group", help="Group to join (users only); repeat."),
        as_json: bool = JsonOpt,
    ) -> None:
        """Create the account; prints an activation code to hand to its owner."""
        r = _create(
            kind,
            {"username": username, "display_name": display_name, "email": email, "groups": group},
            as_json,
        )
        if not as_json:
            say(
                "Give {} this activation code (shown once): [bold]{}[/]\n"
                "They run: zerogate admin activate --url URL --pin PIN --username {}",
                username,
                r["activation_code"],
                username,
            )

    @apps[kind].command("reset")
    def reset(username: str, as_json: bool = JsonOpt) -> None:
        """Clear password and TOTP; prints a new activation code."""
        with errors_to_exit(), client() as c:
            emit(c.post(f"{item_path(RESOURCES[kind][0], username)}/reset"), as_json)


_account_commands("admin")
_account_commands("user")


@apps["group"].command("create")
def group_create(
    name: str,
    description: str = typer.Option("", "--description"),
    member: list[str] = typer.Option([], "--member", help="Username; repeat."),
    as_json: bool = JsonOpt,
) -> None:
    _create("group", {"name": name, "description": description, "members": member}, as_json)


def _change_members(group: str, add: list[str], remove: list[str], as_json: bool) -> None:
    """Send only the change, never the whole member list (cheap for large groups)."""
    with errors_to_exit(), client() as c:
        r = c.patch(f"{item_path('/v1/groups', group)}/members", {"add": add, "remove": remove})
    if as_json:
        emit(r, True)
        return
    changed = r["added"] or r["removed"]
    say(
        "Group {}: {}; it has {} member(s).",
        r["name"],
        ", ".join([*(f"+{u}" for u in r["added"]), *(f"-{u}" for u in r["removed"])])
        if changed
        else "no change",
        r["member_count"],
    )


@apps["group"].command("add-member")
def group_add_member(
    group: str = typer.Argument(..., help="The group's name."),
    usernames: list[str] = typer.Argument(..., help="Users to add (members already are left as they are)."),
    as_json: bool = JsonOpt,
) -> None:
    """Add users to a group."""
    _change_members(group, usernames, [], as_json)


@apps["group"].command("remove-member")
def group_remove_member(
    group: str = typer.Argument(..., help="The group's name."),
    usernames: list[str] = typer.Argument(..., help="Users to remove (non-members are ignored)."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove users from a group."""
    _change_members(group, [], usernames, as_json)


@apps["connector-group"].command("create")
def connector_group_create(
    name: str,
    subnet: list[str] = typer.Option(..., "--subnet", help="Fronted subnet (CIDR); repeat."),
    snat: bool = typer.Option(
        True,
        "--snat/--no-snat",
        help="Masquerade to the connector's address (default) or route client addresses.",
    ),
    vip: str = typer.Option(None, "--vrrp-virtual-ip", help="Virtual IP shared by a master/backup pair."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    _create(
        "connector-group",
        {"name": name, "subnets": subnet, "snat": snat, "vrrp_virtual_ip": vip, "description": description},
        as_json,
    )


@apps["gateway"].command("create")
def gateway_create(
    name: str,
    endpoint: str = typer.Option(
        ..., "--endpoint", help="Public host name or IP that clients and connectors dial."
    ),
    ports: str = typer.Option("51820-53000", "--ports", help="UDP port range for WireGuard."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    first, _, last = ports.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        fail(f"--ports {ports!r}: expected FIRST-LAST, e.g. 51820-53000")
    _create(
        "gateway",
        {
            "name": name,
            "public_endpoint": endpoint,
            "port_first": int(first),
            "port_last": int(last or first),
            "description": description,
        },
        as_json,
    )


def parse_destination(text: str) -> dict[str, Any]:
    """PROTO:ADDRESS[:PORTS] — tcp:10.1.0.10:80,443  udp:10.1.0.0/24:53  icmp:10.1.0.0/24  tcp:[fd00::1]:22"""
    proto, sep, rest = text.partition(":")
    if not sep or proto not in ("tcp", "udp", "icmp", "any"):
        raise ValueError(f"--dest {text!r}: expected PROTO:ADDRESS[:PORTS] with PROTO tcp, udp, icmp or any")
    ports: list[str] = []
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            ports = tail[1:].split(",")
    elif proto in ("tcp", "udp") and rest.count(":") == 1:
        address, _, port_text = rest.partition(":")
        ports = port_text.split(",")
    else:
        address = rest
    return {"address": address, "protocol": proto, "ports": [p for p in ports if p]}


@apps["application"].command("create")
def application_create(
    name: str,
    connector_group: str = typer.Option(..., "--connector-group", help="Group whose connectors reach it."),
    dest: list[str] = typer.Option(
        ..., "--dest", help="PROTO:ADDRESS[:PORTS], e.g. tcp:10.1.0.10:80,443 or icmp:10.1.0.0/24; repeat."
    ),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    with errors_to_exit():
        destinations = [parse_destination(d) for d in dest]
    _create(
        "application",
        {
            "name": name,
            "connector_group": connector_group,
            "destinations": destinations,
            "description": description,
        },
        as_json,
    )


_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def parse_window(text: str) -> dict[str, Any]:
    """'mon-fri 08:00-18:00 [TZ]' or 'sat,sun 10:00-14:00'."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise ValueError(
            f"--window {text!r}: expected 'DAYS HH:MM-HH:MM [TZ]', e.g. 'mon-fri 08:00-18:00 Europe/Berlin'"
        )
    days: list[str] = []
    for piece in parts[0].lower().split(","):
        a, _, b = piece.partition("-")
        if a not in _DAYS or (b and b not in _DAYS):
            raise ValueError(f"--window: unknown day in {piece!r} (use mon..sun)")
        i, j = _DAYS.index(a), _DAYS.index(b or a)
        days.extend(_DAYS[i : j + 1] if i <= j else _DAYS[i:] + _DAYS[: j + 1])
    start, sep, end = parts[1].partition("-")
    if not sep:
        raise ValueError(f"--window: time {parts[1]!r} should be HH:MM-HH:MM")
    return {"days": days, "start": start, "end": end, "tz": parts[2] if len(parts) == 3 else "UTC"}


@apps["policy"].command("create")
def policy_create(
    name: str,
    group: list[str] = typer.Option(..., "--group", help="Group this policy grants; repeat."),
    app_: list[str] = typer.Option(..., "--app", help="Application granted; repeat."),
    require_mfa: bool = typer.Option(
        False, "--require-mfa", help="Only for sessions signed in with a second factor."
    ),
    window: str = typer.Option(
        None,
        "--window",
        help="Only during 'DAYS HH:MM-HH:MM [TZ]', e.g. 'mon-fri 08:00-18:00 Europe/Berlin'.",
    ),
    disabled: bool = typer.Option(False, "--disabled"),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    """Allow GROUPs to reach APPs. Everything no policy allows is denied."""
    with errors_to_exit():
        tw = parse_window(window) if window else None
    _create(
        "policy",
        {
            "name": name,
            "groups": group,
            "applications": app_,
            "require_mfa": require_mfa,
            "time_window": tw,
            "enabled": not disabled,
            "description": description,
        },
        as_json,
    )


@apps["connector"].command("revoke")
def connector_revoke(name: str) -> None:
    """Revoke the connector's credential and drop it from every gateway (same as delete)."""
    _delete("connector", name)
    say("Connector {} revoked.", name)
