"""``zerogate admin segment``: segment servers, the assets they manage, modes, rule review.

The operator's flow: create a segment server and a key for it (``zerogate
admin key create --segment-server NAME``), enroll its host, add assets, check
and trust each asset's host key, let it learn for a window, review and
simulate the proposed rules, approve them, protect; ``unprotect`` is always
one command away. Every command takes ``--json``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.cli.objects import item_path
from zerogate.cli.segment_jit_admin import app as jit_app
from zerogate.cli.session import client

app = typer.Typer(
    help="Segment: hosts protected by their own firewall, learned, reviewed and enforced by a segment server.",
    no_args_is_help=True,
)
server_app = typer.Typer(help="Segment servers (each enrolls with its own key).", no_args_is_help=True)
asset_app = typer.Typer(help="Assets: the hosts a segment server manages over SSH.", no_args_is_help=True)
rules_app = typer.Typer(help="Review an asset's rules: propose, approve, reject, edit.", no_args_is_help=True)
app.add_typer(server_app, name="server")
app.add_typer(asset_app, name="asset")
app.add_typer(rules_app, name="rules")
app.add_typer(jit_app, name="jit")

ASSETS = "/v1/segment/assets"
ASSET_COLUMNS = [
    "name",
    "address",
    "os",
    "server",
    "mode",
    "state",
    "host_key_fingerprint",
    "flows",
    "reported_at",
]
RULE_COLUMNS = ["id", "status", "action", "protocol", "port_first", "port_last", "sources", "stale"]
_DURATION = re.compile(r"([0-9]{1,7})([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """'7d', '12h', '30m', '45s' or plain seconds, as seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"--for {text!r}: expected a duration like 7d, 12h, 30m or 45s")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_ports(text: str) -> tuple[int, int]:
    """'443' or '8000-8080'."""
    first, sep, last = text.partition("-")
    if not first.isdigit() or (sep and not last.isdigit()):
        raise ValueError(f"--ports {text!r}: expected PORT or FIRST-LAST, e.g. 443 or 8000-8080")
    return int(first), int(last or first)


def resolve(host: str) -> str:
    """HOST as an address: itself when it is one, else what the resolver says."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, 22, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise ValueError(f"cannot resolve {host!r}: pass its address with --address") from None
    return str(found[0][4][0])


def _asset(name: str) -> str:
    return item_path(ASSETS, name)


# ----------------------------------------------------------------- servers


@server_app.command("create")
def server_create(
    name: str, description: str = typer.Option("", "--description"), as_json: bool = JsonOpt
) -> None:
    """Declare a segment server; then make its key: zerogate admin key create --segment-server NAME."""
    with errors_to_exit(), client() as c:
        r = c.post("/v1/segment-servers", {"name": name, "description": description})
    emit(r, as_json)


@server_app.command("list")
def server_list(as_json: bool = JsonOpt) -> None:
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/segment-servers"), as_json, ["name", "status", "assets", "last_seen_at", "description"]
        )


@server_app.command("show")
def server_show(name: str, as_json: bool = JsonOpt) -> None:
    with errors_to_exit(), client() as c:
        emit(c.get(item_path("/v1/segment-servers", name)), as_json)


@server_app.command("delete")
def server_delete(name: str) -> None:
    """Delete a server that manages no assets any more; its credential stops working."""
    with errors_to_exit(), client() as c:
        c.delete(item_path("/v1/segment-servers", name))
    say("Deleted segment server {}.", name)


# ----------------------------------------------------------------- assets


@asset_app.command("add")
def asset_add(
    host: str = typer.Argument(..., help="The host's name (letters, digits, . _ -)."),
    server: str = typer.Option(..., "--server", help="The segment server that manages it."),
    address: str = typer.Option(None, "--address", help="Its address (default: HOST resolved here)."),
    os_name: str = typer.Option(
        "linux", "--os", help="linux (managed over SSH) or windows (over WinRM).", case_sensitive=False
    ),
    port: int = typer.Option(
        None, "--port", min=1, max=65535, help="Its sshd port (default 22), or WinRM port (default 5986)."
    ),
    user: str = typer.Option(
        "zerogate-segment",
        "--user",
        help="The account the server logs in with: SSH user, or the WinRM account (DOMAIN\\user, user@REALM).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Add a host in mode monitored; once its server reached it, trust its host key
    (Windows: its WinRM listener's certificate)."""
    with errors_to_exit(), client() as c:
        body: dict[str, object] = {
            "name": host,
            "address": address or resolve(host),
            "server": server,
            "os": os_name.lower(),
            "ssh_user": user,
        }
        if port is not None:
            body["ssh_port"] = port
        r = c.post(ASSETS, body)
    emit(r, as_json)


@asset_app.command("list")
def asset_list(as_json: bool = JsonOpt) -> None:
    with errors_to_exit(), client() as c:
        emit(c.get(ASSETS), as_json, ASSET_COLUMNS)


@asset_app.command("show")
def asset_show(name: str, as_json: bool = JsonOpt) -> None:
    """Everything about one asset: state, host keys, mode, learning window, preflight."""
    with errors_to_exit(), client() as c:
        emit(c.get(_asset(name)), as_json)


@asset_app.command("remove")
def asset_remove(name: str) -> None:
    """Forget an asset (refused while it is protected: unprotect it first)."""
    with errors_to_exit(), client() as c:
        c.delete(_asset(name))
    say("Removed asset {}.", name)


@asset_app.command("trust")
def asset_trust(
    name: str,
    fingerprint: str = typer.Argument(
        ...,
        help="SHA256:... of the host key, as 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' prints it on "
        "the host; for Windows, the base64 SHA-256 of the WinRM listener's certificate.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Pin the host key the asset offered, after checking its fingerprint on the host itself."""
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/trust", {"fingerprint": fingerprint})
    if as_json:
        emit(r, True)
    else:
        say("Pinned host key {} for {}.", r["host_key_fingerprint"], r["name"])


@asset_app.command("flows")
def asset_flows(name: str, as_json: bool = JsonOpt) -> None:
    """The flows learned on the asset."""
    with errors_to_exit(), client() as c:
        emit(
            c.get(f"{_asset(name)}/flows"),
            as_json,
            ["direction", "protocol", "port", "peer", "process", "count", "first_seen", "last_seen"],
        )


# ----------------------------------------------------------------- modes


def _mode(name: str, body: dict[str, Any], as_json: bool) -> None:
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/mode", body)
    if as_json:
        emit(r, True)
    else:
        say("{} is now {} (rules revision {}).", r["name"], r["mode"], r["rules_revision"])


@app.command()
def learn(
    name: str,
    for_: str = typer.Option(..., "--for", help="The learning window: 7d in production, 30s in a lab."),
    with_blocks: bool = typer.Option(
        False, "--with-blocks", help="Also enforce the approved drop rules while learning."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Observe the asset's connections for a window; nothing is blocked (except drops with --with-blocks)."""
    with errors_to_exit():
        seconds = parse_duration(for_)
    _mode(
        name,
        {"mode": "learning_with_blocks" if with_blocks else "learning", "window_seconds": seconds},
        as_json,
    )


@app.command()
def extend(
    name: str,
    for_: str = typer.Option(..., "--for", help="How much longer to learn, e.g. 2d."),
    as_json: bool = JsonOpt,
) -> None:
    """Make the learning window longer."""
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/extend", {"seconds": parse_duration(for_)})
    if as_json:
        emit(r, True)
    else:
        say("{} learns until {}.", r["name"], r["learning_until"])


@app.command()
def protect(name: str, as_json: bool = JsonOpt) -> None:
    """Enforce the approved rules on the host (needs a trusted host key and an approved rule)."""
    _mode(name, {"mode": "protected"}, as_json)


@app.command()
def monitor(name: str, as_json: bool = JsonOpt) -> None:
    """Stop learning; keep the asset inventoried."""
    _mode(name, {"mode": "monitored"}, as_json)


@app.command()
def unprotect(name: str, as_json: bool = JsonOpt) -> None:
    """Remove enforcement from the host now, from any mode (back to monitored)."""
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/unprotect")
    if as_json:
        emit(r, True)
    else:
        say("{} is now {}: its server removes the firewall table.", r["name"], r["mode"])


# ----------------------------------------------------------------- rules


@rules_app.command("list")
def rules_list(name: str, as_json: bool = JsonOpt) -> None:
    """The asset's rules; 'stale' marks approved rules nothing used lately (proposed deletions)."""
    with errors_to_exit(), client() as c:
        emit(c.get(f"{_asset(name)}/rules"), as_json, RULE_COLUMNS)


@rules_app.command("propose")
def rules_propose(name: str, as_json: bool = JsonOpt) -> None:
    """Make proposals from the learned flows (replaces the open ones)."""
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/propose")
    if as_json:
        emit(r, True)
        return
    emit(r["proposed"], False, RULE_COLUMNS)
    if r["warning"]:
        say("[yellow]warning:[/] {}", r["warning"])


def _decide(name: str, rule_ids: list[int], verb: str, as_json: bool) -> None:
    with errors_to_exit(), client() as c:
        done = [c.post(f"{_asset(name)}/rules/{rule_id}/{verb}") for rule_id in rule_ids]
    emit(done, as_json, RULE_COLUMNS)


@rules_app.command("approve")
def rules_approve(name: str, rule_ids: list[int], as_json: bool = JsonOpt) -> None:
    """Approve rules by id (protected hosts enforce them at the next revision)."""
    _decide(name, rule_ids, "approve", as_json)


@rules_app.command("reject")
def rules_reject(name: str, rule_ids: list[int], as_json: bool = JsonOpt) -> None:
    """Reject rules by id (they are not proposed again)."""
    _decide(name, rule_ids, "reject", as_json)


@rules_app.command("edit")
def rules_edit(
    name: str,
    rule_id: int,
    ports: str = typer.Option(None, "--ports", help="PORT or FIRST-LAST."),
    source: list[str] = typer.Option(
        [],
        "--source",
        help="Prefix or known group (clients, site:NAME, asset:NAME); repeat. Replaces the sources.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Change a rule's ports or sources; the edited rule is approved."""
    body: dict[str, Any] = {}
    with errors_to_exit():
        if ports:
            body["port_first"], body["port_last"] = parse_ports(ports)
    if source:
        body["sources"] = source
    if not body:
        fail("nothing to change: pass --ports or --source")
    with errors_to_exit(), client() as c:
        emit(c.patch(f"{_asset(name)}/rules/{rule_id}", body), as_json)


@rules_app.command("add")
def rules_add(
    name: str,
    protocol: str = typer.Option("tcp", "--protocol", help="tcp or udp"),
    ports: str = typer.Option(..., "--ports", help="PORT or FIRST-LAST."),
    source: list[str] = typer.Option(..., "--source", help="Prefix or known group; repeat."),
    drop: bool = typer.Option(False, "--drop", help="A deny rule (enforced in learning with blocks)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write a rule yourself; it is approved at once."""
    with errors_to_exit():
        first, last = parse_ports(ports)
    body = {
        "action": "drop" if drop else "accept",
        "protocol": protocol,
        "port_first": first,
        "port_last": last,
        "sources": source,
    }
    with errors_to_exit(), client() as c:
        emit(c.post(f"{_asset(name)}/rules", body), as_json)


@rules_app.command("delete")
def rules_delete(name: str, rule_id: int) -> None:
    """Delete a rule (e.g. a stale one)."""
    with errors_to_exit(), client() as c:
        c.delete(f"{_asset(name)}/rules/{rule_id}")
    say("Deleted rule {} of {}.", rule_id, name)


@app.command()
def simulate(
    name: str,
    rule: list[int] = typer.Option([], "--rule", help="A proposed rule to count as approved; repeat."),
    all_proposed: bool = typer.Option(False, "--all-proposed", help="Count every proposed rule as approved."),
    as_json: bool = JsonOpt,
) -> None:
    """Replay the learned flows against the approved (and chosen proposed) rules: who would be blocked?"""
    with errors_to_exit(), client() as c:
        r = c.post(f"{_asset(name)}/simulate", {"rule_ids": rule, "all_proposed": all_proposed})
    if as_json:
        emit(r, True)
        return
    for source in r["sources"]:
        if source["allowed"]:
            say("[green]ALLOW[/] {}", source["peer"])
        else:
            blocked = ", ".join(f"{f['protocol']}/{f['port']} x{f['count']}" for f in source["blocked_flows"])
            say("[red]BLOCK[/] {}: {}", source["peer"], blocked)
    say("{} source(s) would be blocked by rules {}.", r["blocked_sources"], r["rule_ids"])


@app.command("jump-hosts")
def jump_hosts(
    set_: list[str] = typer.Option([], "--set", help="Replace the list with these prefixes; repeat."),
    clear: bool = typer.Option(False, "--clear", help="Empty the list."),
    as_json: bool = JsonOpt,
) -> None:
    """Show (or replace) the networks SSH may come from on protected hosts, besides the segment server."""
    with errors_to_exit(), client() as c:
        if set_ or clear:
            r = c.put("/v1/segment/jump-hosts", {"jump_hosts": set_})
        else:
            r = c.get("/v1/segment/jump-hosts")
    if as_json:
        emit(r, True)
    else:
        say("Jump hosts: {}", ", ".join(r["jump_hosts"]) or "(none)")
