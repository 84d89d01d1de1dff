"""``zerogate admin``: sign in and manage the deployment through the API.

The signed-in session lives in a profile file (default
``~/.config/zerogate/admin.json``, mode 0600): the controller URL, its pinned
CA certificate and the session token. ``--profile`` or ``ZEROGATE_PROFILE``
picks another file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from zerogate.cli.common import (
    JsonOpt,
    ask,
    emit,
    errors_to_exit,
    fail,
    read_secret,
    say,
    show_audit_verification,
    visible,
)
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.pki.ca import ca_pin

app = typer.Typer(
    help="Sign in and manage users, groups, sites, applications and policy.", no_args_is_help=True
)

_profile_path: list[Path] = []


def default_profile() -> Path:
    if env := os.environ.get("ZEROGATE_PROFILE"):
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "zerogate" / "admin.json"


@app.callback()
def _options(
    profile: Path = typer.Option(
        None, "--profile", help="Session file (default ~/.config/zerogate/admin.json or $ZEROGATE_PROFILE)."
    ),
) -> None:
    _profile_path[:] = [profile or default_profile()]


def profile_path() -> Path:
    return _profile_path[0] if _profile_path else default_profile()


def load_profile() -> dict[str, Any]:
    path = profile_path()
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"not signed in ({path} does not exist): run 'zerogate admin login --url URL --pin PIN'")
    except (OSError, ValueError) as exc:
        fail(f"{path} is unreadable ({exc}); sign in again")
    return data


def save_profile(data: dict[str, Any]) -> None:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def client(with_token: bool = True) -> ControllerClient:
    p = load_profile()
    if with_token and not p.get("token"):
        fail("not signed in: run 'zerogate admin login'")
    return ControllerClient(p["url"], p["ca_pem"].encode(), token=p.get("token") if with_token else None)


def _connect(url: str | None, pin: str | None) -> tuple[str, str]:
    """(url, ca_pem): from --url/--pin (checked against the pin) or from the profile."""
    if url:
        if not pin:
            fail("--pin is needed with --url (it is printed by 'zerogate controller init')")
        return url.rstrip("/"), fetch_ca(url, pin).decode()
    p = load_profile()
    return p["url"], p["ca_pem"]


UrlOpt = typer.Option(
    None, "--url", help="Controller URL, e.g. https://zt.example.com (default: from the profile)."
)
PinOpt = typer.Option(None, "--pin", help="CA pin (sha256/...) printed by 'controller init'.")
UserOpt = typer.Option(None, "--username", "-u", help="Account name.")
PwStdin = typer.Option(False, "--password-stdin", help="Read the password from one line of standard input.")


def _confirm_command(username: str) -> str:
    return f"zerogate admin totp-confirm --username {username} --totp CODE"


def _show_totp(enrollment: dict[str, Any], as_json: bool) -> None:
    # The API's next_step names the API call; the CLI user gets the command to type.
    next_step = _confirm_command(enrollment["username"])
    if as_json:
        emit(enrollment | {"next_step": next_step}, True)
        return
    say(
        "Add this account to your authenticator app (TOTP, 6 digits, 30 s):\n"
        "  secret: [bold]{}[/]\n  uri:    {}\nThen confirm: {}",
        enrollment["totp_secret"],
        enrollment["otpauth_uri"],
        next_step,
    )


def _profile_is_free(base: str) -> bool:
    """May the profile be rewritten for a new account? Not while it holds a session:
    on the same controller it is kept as it is (totp-confirm needs only the URL and
    CA, which it has); on another one the command stops before using the code."""
    try:
        prior = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return True
    if not isinstance(prior, dict) or not prior.get("token"):
        return True
    if prior.get("url") != base:
        fail(
            f"{profile_path()} holds the session of {prior.get('username')} on {prior.get('url')}; "
            "pass --profile with another file for this account"
        )
    return False


def _set_first_password(
    url: str | None,
    pin: str | None,
    username: str | None,
    code: str | None,
    code_name: str,
    endpoint: str,
    code_field: str,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Bootstrap and activation share one flow: code + new password, then TOTP setup."""
    with errors_to_exit():
        base, ca_pem = _connect(url, pin)
        username = ask("username", username)
        code = ask(code_name, code)
        password = read_secret("new password", password_stdin)
        free = _profile_is_free(base)
        with ControllerClient(base, ca_pem.encode()) as c:
            enrollment = c.post(endpoint, {code_field: code, "username": username, "password": password})
        if free:
            save_profile({"url": base, "ca_pem": ca_pem, "username": username})
        _show_totp(enrollment, as_json)


@app.command()
def bootstrap(
    url: str = typer.Option(..., "--url", help="Controller URL."),
    pin: str = typer.Option(..., "--pin", help="CA pin printed by 'controller init'."),
    code: str = typer.Option(None, "--code", help="The one-time bootstrap code."),
    username: str = UserOpt,
    password_stdin: bool = PwStdin,
    as_json: bool = JsonOpt,
) -> None:
    """Create the first admin with the bootstrap code, then set up TOTP."""
    _set_first_password(
        url, pin, username, code, "bootstrap code", "/v1/auth/bootstrap", "code", password_stdin, as_json
    )


@app.command()
def activate(
    url: str = UrlOpt,
    pin: str = PinOpt,
    username: str = UserOpt,
    code: str = typer.Option(None, "--code", help="Activation code an admin gave you."),
    password_stdin: bool = PwStdin,
    as_json: bool = JsonOpt,
) -> None:
    """Set the password of a new account (admin or user) with its activation code."""
    _set_first_password(
        url,
        pin,
        username,
        code,
        "activation code",
        "/v1/auth/activate",
        "activation_code",
        password_stdin,
        as_json,
    )


@app.command("totp-confirm")
def totp_confirm(
    username: str = UserOpt,
    totp: str = typer.Option(None, "--totp", help="Current code from the authenticator."),
    password_stdin: bool = PwStdin,
) -> None:
    """Confirm the authenticator works; this activates the account."""
    with errors_to_exit():
        p = load_profile()
        username = ask("username", username or p.get("username"))
        password = read_secret("password", password_stdin)
        totp = ask("TOTP code", totp)
        with ControllerClient(p["url"], p["ca_pem"].encode()) as c:
            r = c.post("/v1/auth/totp/confirm", {"username": username, "password": password, "totp": totp})
        say("[green]Account {} is active.[/] Sign in: {}", username, _sign_in_command(r, p, username))


def _sign_in_command(confirmed: Any, profile: dict[str, Any], username: str) -> str:
    """Users sign in with the client on their device; admins with this CLI."""
    kind = confirmed.get("kind") if isinstance(confirmed, dict) else None
    admin = f"zerogate admin login --username {username}"
    if kind == "admin":
        return admin
    pin = ca_pin(profile["ca_pem"].encode())
    user = f"zerogate client login --url {profile['url']} --pin {pin} --username {username}"
    return user if kind == "user" else f"{user} (a user account) or {admin} (an admin account)"


@app.command()
def login(
    url: str = UrlOpt,
    pin: str = PinOpt,
    username: str = UserOpt,
    totp: str = typer.Option(None, "--totp", help="Current code from the authenticator."),
    password_stdin: bool = PwStdin,
) -> None:
    """Sign in with password + TOTP; the session is kept in the profile."""
    with errors_to_exit():
        base, ca_pem = _connect(url, pin)
        prior = {}
        try:
            prior = json.loads(profile_path().read_text())
        except (OSError, ValueError):
            pass
        username = ask("username", username or prior.get("username"))
        password = read_secret("password", password_stdin)
        totp = ask("TOTP code", totp)
        with ControllerClient(base, ca_pem.encode()) as c:
            r = c.post("/v1/auth/login", {"username": username, "password": password, "totp": totp})
        save_profile({"url": base, "ca_pem": ca_pem, "username": username, "token": r["token"]})
        say("Signed in as {} ({}) until {}.", username, r["kind"], r["expires_at"])


@app.command()
def logout() -> None:
    """End the session: the token is revoked on the controller."""
    with errors_to_exit():
        p = load_profile()
        if p.get("token"):
            with client() as c:
                c.post("/v1/auth/logout")
        p.pop("token", None)
        save_profile(p)
        say("Signed out.")


@app.command()
def whoami(as_json: bool = JsonOpt) -> None:
    """Show who the profile is signed in as."""
    with errors_to_exit(), client() as c:
        emit(c.get("/v1/auth/whoami"), as_json)


# ----------------------------------------------------------------- resources

# name: (API path, key field, table columns)
RESOURCES: dict[str, tuple[str, str, list[str]]] = {
    "admin": ("/v1/admins", "username", ["username", "status", "totp_enrolled", "created_at"]),
    "user": ("/v1/users", "username", ["username", "display_name", "status", "groups"]),
    "group": ("/v1/groups", "name", ["name", "description", "members"]),
    "connector-group": (
        "/v1/connector-groups",
        "name",
        ["name", "subnets", "snat", "vrrp_virtual_ip", "connectors"],
    ),
    "connector": (
        "/v1/connectors",
        "name",
        ["name", "connector_group", "status", "tunnel", "last_handshake_at", "last_seen_at", "location"],
    ),
    "gateway": ("/v1/gateways", "name", ["name", "public_endpoint", "port_first", "port_last", "status"]),
    "application": ("/v1/applications", "name", ["name", "connector_group", "destinations"]),
    "policy": (
        "/v1/policies",
        "name",
        ["name", "groups", "applications", "require_mfa", "time_window", "enabled"],
    ),
}

_apps: dict[str, typer.Typer] = {}


def _tunnel_hints(connectors: list[dict[str, Any]]) -> None:
    """Under the connector table: what to check for each tunnel that is not up."""
    for c in connectors:
        if c.get("tunnel") != "up" and c.get("tunnel_hint"):
            say("[yellow]{}[/] tunnel {}: {}", c.get("name"), c.get("tunnel"), c["tunnel_hint"])


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
            emit(c.get(f"{path}/{quote(name, safe='')}"), as_json)

    @sub.command("delete")
    def delete(name: str = typer.Argument(..., help=f"The {kind}'s {key}.")) -> None:
        with errors_to_exit(), client() as c:
            c.delete(f"{path}/{quote(name, safe='')}")
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
        body: dict[str, Any] = {}
        for item in set_:
            field, sep, raw = item.partition("=")
            if not sep or not field:
                fail(f"--set {item!r}: expected FIELD=VALUE")
            try:
                body[field] = json.loads(raw)
            except ValueError:
                body[field] = raw
        if not body:
            fail("nothing to change: pass --set FIELD=VALUE")
        with errors_to_exit(), client() as c:
            emit(c.patch(f"{path}/{quote(name, safe='')}", body), as_json)

    app.add_typer(sub, name=kind)
    _apps[kind] = sub
    return sub


for _kind in RESOURCES:
    _resource_app(_kind)


def _create(kind: str, body: dict[str, Any], as_json: bool) -> dict[str, Any]:
    path = RESOURCES[kind][0]
    with errors_to_exit(), client() as c:
        result: dict[str, Any] = c.post(path, body)
    emit(result, as_json)
    return result


def _account_create(kind: str) -> None:
    @_apps[kind].command("create")
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

    @_apps[kind].command("reset")
    def reset(username: str, as_json: bool = JsonOpt) -> None:
        """Clear password and TOTP; prints a new activation code."""
        with errors_to_exit(), client() as c:
            emit(c.post(f"{RESOURCES[kind][0]}/{username}/reset"), as_json)


_account_create("admin")
_account_create("user")


@_apps["group"].command("create")
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
        r = c.patch(f"/v1/groups/{quote(group, safe='')}/members", {"add": add, "remove": remove})
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


@_apps["group"].command("add-member")
def group_add_member(
    group: str = typer.Argument(..., help="The group's name."),
    usernames: list[str] = typer.Argument(..., help="Users to add (members already are left as they are)."),
    as_json: bool = JsonOpt,
) -> None:
    """Add users to a group."""
    _change_members(group, usernames, [], as_json)


@_apps["group"].command("remove-member")
def group_remove_member(
    group: str = typer.Argument(..., help="The group's name."),
    usernames: list[str] = typer.Argument(..., help="Users to remove (non-members are ignored)."),
    as_json: bool = JsonOpt,
) -> None:
    """Remove users from a group."""
    _change_members(group, [], usernames, as_json)


@_apps["connector-group"].command("create")
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


@_apps["gateway"].command("create")
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


@_apps["application"].command("create")
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


def parse_window(text: str) -> dict[str, Any]:
    """'mon-fri 08:00-18:00 [TZ]' or 'sat,sun 10:00-14:00'."""
    parts = text.split()
    if len(parts) not in (2, 3):
        raise ValueError(
            f"--window {text!r}: expected 'DAYS HH:MM-HH:MM [TZ]', e.g. 'mon-fri 08:00-18:00 Europe/Berlin'"
        )
    order = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    days: list[str] = []
    for piece in parts[0].lower().split(","):
        a, _, b = piece.partition("-")
        if a not in order or (b and b not in order):
            raise ValueError(f"--window: unknown day in {piece!r} (use mon..sun)")
        i, j = order.index(a), order.index(b or a)
        days.extend(order[i : j + 1] if i <= j else order[i:] + order[: j + 1])
    start, sep, end = parts[1].partition("-")
    if not sep:
        raise ValueError(f"--window: time {parts[1]!r} should be HH:MM-HH:MM")
    return {"days": days, "start": start, "end": end, "tz": parts[2] if len(parts) == 3 else "UTC"}


@_apps["policy"].command("create")
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


@_apps["connector"].command("revoke")
def connector_revoke(name: str) -> None:
    """Revoke the connector's credential and drop it from every gateway (same as delete)."""
    with errors_to_exit(), client() as c:
        c.delete(f"/v1/connectors/{quote(name, safe='')}")
        say("Connector {} revoked.", name)


# ----------------------------------------------------------------- keys, devices, tokens, audit, pool

key_app = typer.Typer(
    help="Provisioning keys / install strings that enroll connectors and gateways.", no_args_is_help=True
)
app.add_typer(key_app, name="key")


@key_app.command("create")
def key_create(
    connector_group: str = typer.Option(None, "--connector-group", help="Enroll connectors into this group."),
    gateway: str = typer.Option(None, "--gateway", help="Enroll the host running this gateway."),
    ttl: int = typer.Option(None, "--ttl-minutes", help="Lifetime (default from the controller: 60)."),
    uses: int = typer.Option(1, "--max-uses", help="How many enrollments it allows."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    """Create a key and print its install string (shown once)."""
    if bool(connector_group) == bool(gateway):
        fail("give exactly one of --connector-group or --gateway")
    path = f"/v1/connector-groups/{connector_group}" if connector_group else f"/v1/gateways/{gateway}"
    with errors_to_exit(), client() as c:
        r = c.post(
            f"{path}/provisioning-keys", {"ttl_minutes": ttl, "max_uses": uses, "description": description}
        )
    if as_json:
        emit(r, True)
        return
    role = "connector" if connector_group else "gateway"
    say(
        "Install string for {} (valid until {}, {} use(s)); on the host, as root:",
        r["target"],
        r["expires_at"],
        r["max_uses"],
    )
    print(f"zerogate {role} enroll {visible(r['install_string'])}")


@key_app.command("list")
def key_list(as_json: bool = JsonOpt) -> None:
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/provisioning-keys"),
            as_json,
            ["id", "hint", "target", "state", "uses", "max_uses", "expires_at"],
        )


@key_app.command("revoke")
def key_revoke(key_id: int) -> None:
    with errors_to_exit(), client() as c:
        c.delete(f"/v1/provisioning-keys/{key_id}")
        say("Provisioning key {} revoked.", key_id)


device_app = typer.Typer(help="Enrolled gateways, connectors and client devices.", no_args_is_help=True)
app.add_typer(device_app, name="device")


@device_app.command("list")
def device_list(
    role: str = typer.Option(None, "--role", help="gateway, connector or client"), as_json: bool = JsonOpt
) -> None:
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/devices", {"role": role} if role else None),
            as_json,
            ["id", "role", "name", "status", "owner", "address", "last_seen_at"],
        )


@device_app.command("revoke")
def device_revoke(device_id: int, as_json: bool = JsonOpt) -> None:
    """Cut a device off: its credential stops working at once and gateways drop it."""
    with errors_to_exit(), client() as c:
        emit(c.post(f"/v1/devices/{device_id}/revoke"), as_json)


token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(name: str, ttl_days: int = typer.Option(30, "--ttl-days"), as_json: bool = JsonOpt) -> None:
    """Create a token acting as you (shown once)."""
    with errors_to_exit(), client() as c:
        emit(c.post("/v1/tokens", {"name": name, "ttl_days": ttl_days}), as_json)


@token_app.command("list")
def token_list(as_json: bool = JsonOpt) -> None:
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/tokens"),
            as_json,
            ["id", "name", "kind", "hint", "username", "expires_at", "revoked_at"],
        )


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
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/audit", params),
            as_json,
            ["id", "at", "actor", "action", "object_type", "object_id", "outcome"],
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
