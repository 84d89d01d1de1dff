"""``zerogate admin segment jit``: MFA-protected ports and just-in-time openings.

The operator marks ports of a protected asset that users may open for
themselves (``jit port add``); a user then asks the asset's segment server,
proves password + TOTP, and gets a narrow opening (their address to that port)
that closes by itself. ``jit list`` shows the openings, ``jit revoke`` closes
one at once. Every command takes ``--json``.
"""

from __future__ import annotations

import re

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.cli.objects import item_path
from zerogate.cli.session import client

app = typer.Typer(
    help="Just-in-time openings: ports users may open for themselves with MFA, and the openings.",
    no_args_is_help=True,
)
port_app = typer.Typer(help="MFA-protected ports of an asset.", no_args_is_help=True)
app.add_typer(port_app, name="port")

ASSETS = "/v1/segment/assets"
OPENINGS = "/v1/segment/jit-openings"
PORT_COLUMNS = ["asset", "protocol", "port", "users", "groups", "sources", "max_duration"]
OPENING_COLUMNS = ["id", "state", "asset", "user", "source", "protocol", "port", "expires_at", "revoked_at"]
_DURATION = re.compile(r"([0-9]{1,7})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
ProtocolOpt = typer.Option("tcp", "--protocol", help="tcp or udp.")


def parse_max_duration(text: str) -> int:
    """'1h', '4h', '8h', '12h', '1d' (or any such) or plain seconds, as seconds.
    Which ones are allowed is the controller's setting; it refuses the others."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise ValueError("--max-duration: expected 1h, 4h, 8h, 12h, 1d or a number of seconds")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _ports(asset: str) -> str:
    return item_path(ASSETS, asset) + "/jit-ports"


@port_app.command("add")
def port_add(
    asset: str = typer.Argument(..., help="The asset (in mode protected for openings to work)."),
    port: int = typer.Argument(..., help="The port users may open, e.g. 22, 3389, 5432."),
    protocol: str = ProtocolOpt,
    users: list[str] = typer.Option([], "--user", help="A user who may ask (repeat for more)."),
    groups: list[str] = typer.Option([], "--group", help="A group whose members may ask (repeat)."),
    sources: list[str] = typer.Option(
        [], "--source", help="Only from this prefix (repeat; default: from anywhere)."
    ),
    max_duration: str = typer.Option("1h", "--max-duration", help="1h, 4h, 8h, 12h, 1d or seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Let users (and group members) open PORT of ASSET for themselves with password + TOTP."""
    try:
        seconds = parse_max_duration(max_duration)
    except ValueError as exc:
        fail(str(exc))
    body = {
        "protocol": protocol,
        "port": port,
        "users": users,
        "groups": groups,
        "sources": sources,
        "max_duration": seconds,
    }
    with errors_to_exit(), client() as c:
        emit(c.post(_ports(asset), body), as_json, PORT_COLUMNS)


@port_app.command("list")
def port_list(asset: str, as_json: bool = JsonOpt) -> None:
    """The MFA-protected ports of ASSET."""
    with errors_to_exit(), client() as c:
        emit(c.get(_ports(asset)), as_json, PORT_COLUMNS)


@port_app.command("remove")
def port_remove(asset: str, port: int, protocol: str = ProtocolOpt) -> None:
    """Stop protecting PORT with MFA; its open openings are revoked at once."""
    with errors_to_exit(), client() as c:
        c.delete(f"{item_path(_ports(asset), protocol)}/{port}")
    say("Removed JIT port {}/{} of {}; its openings are revoked.", protocol, port, asset)


@app.command("list")
def opening_list(
    asset: str = typer.Option(None, "--asset", help="Only this asset's openings."),
    everything: bool = typer.Option(False, "--all", help="Expired and revoked ones too."),
    as_json: bool = JsonOpt,
) -> None:
    """Openings, newest first: the active ones (all with --all)."""
    params: dict[str, object] = {"active_only": "false" if everything else "true"}
    if asset is not None:
        params["asset"] = asset
    with errors_to_exit(), client() as c:
        emit(c.get(OPENINGS, params), as_json, OPENING_COLUMNS)


@app.command("revoke")
def opening_revoke(
    opening_id: int = typer.Argument(..., help="The opening's id (jit list)."), as_json: bool = JsonOpt
) -> None:
    """Close an opening now; the segment server removes it from the host at once."""
    with errors_to_exit(), client() as c:
        r = c.post(f"{OPENINGS}/{opening_id}/revoke")
    if as_json:
        emit(r, as_json)
    else:
        say(
            "Revoked opening {} ({} to {} {}/{}).", r["id"], r["source"], r["asset"], r["protocol"], r["port"]
        )
