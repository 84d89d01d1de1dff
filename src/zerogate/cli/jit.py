"""``zerogate jit request HOST[:PORT] --server https://SEG``: ask the segment server for a
just-in-time opening from this machine to an asset's port.

The request goes to the segment server's listener (:mod:`zerogate.segment.jit_listener`),
not to the controller: the opening is for the address the server sees this machine
come from, so it must be asked from here. The password and the TOTP code are
prompted without echo (``--password-stdin``: both from standard input, one a line);
they are sent once over TLS and never printed.
"""

from __future__ import annotations

import getpass
import re
import ssl
import sys
from datetime import datetime
from typing import Any

import httpx
import typer

from zerogate.cli.common import emit, fail, say
from zerogate.segment.jit_listener import API_PATH, MAX_BODY

app = typer.Typer(help="Just-in-time openings on protected assets (password + TOTP).", no_args_is_help=True)

DURATIONS = {"1h": 3600, "4h": 14400, "8h": 28800, "12h": 43200, "1d": 86400, "24h": 86400}
DEFAULT_PORT = 22
_TARGET = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,252})(?::([1-9][0-9]{0,4}))?")
_SERVER = re.compile(r"https://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::([1-9][0-9]{0,4}))?/?")
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_TOTP = re.compile(r"[0-9]{6,8}")
EXPLAINED = {
    401: "sign-in failed: wrong user, password or code",
    403: "you may not open this port on this asset (ask an admin to mark it for just-in-time access)",
    404: "no such asset, or that port is not offered for just-in-time access on it",
    413: "the request is too large",
    422: "the request was refused as invalid",
}


def _target(text: str) -> tuple[str, int]:
    m = _TARGET.fullmatch(text)
    if m is None or int(m.group(2) or DEFAULT_PORT) > 65535:
        raise typer.BadParameter("give the asset as NAME or NAME:PORT (port 1-65535)")
    return m.group(1), int(m.group(2) or DEFAULT_PORT)


def _server(text: str) -> str:
    m = _SERVER.fullmatch(text)
    if m is None or int(m.group(2) or 443) > 65535:
        raise typer.BadParameter("give the segment server as https://HOST[:PORT]")
    return text.rstrip("/")


def _secrets(from_stdin: bool) -> tuple[str, str]:
    """(password, TOTP code): two lines of stdin, or two prompts without echo."""
    if from_stdin:
        password, code = sys.stdin.readline().rstrip("\n"), sys.stdin.readline().strip()
    elif not sys.stdin.isatty():
        fail("no terminal to ask for the password: pass --password-stdin and pipe it in (then the code)")
    else:
        password, code = getpass.getpass("Password: "), getpass.getpass("TOTP code: ").strip()
    if not password or len(password) > 1024:
        fail("expected the password (1-1024 characters)")
    if not _TOTP.fullmatch(code):
        fail("the TOTP code is 6 to 8 digits from your authenticator app")
    return password, code


def _context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError):
        fail("cannot read the CA file given with --ca-file")


def _refusal(response: httpx.Response) -> str:
    status = response.status_code
    if status == 429:
        wait = response.headers.get("Retry-After", "")
        later = f"in {wait} s" if wait.isdigit() else "later"
        return f"too many attempts; try again {later} (HTTP 429)"
    if status in EXPLAINED:
        return f"{EXPLAINED[status]} (HTTP {status})"
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = (
        detail if isinstance(detail, str) and len(detail) <= 200 else "the segment server refused the request"
    )
    return f"{text} (HTTP {status})"


@app.command("request")
def request(
    target: str = typer.Argument(
        ..., metavar="HOST[:PORT]", help=f"The asset's name and port (default {DEFAULT_PORT})."
    ),
    server: str = typer.Option(..., "--server", help="The segment server's listener, https://HOST[:PORT]."),
    user: str | None = typer.Option(
        None, "--user", help="Your zerogate user name (default: your login name)."
    ),
    protocol: str = typer.Option("tcp", "--protocol", help="tcp or udp."),
    duration: str = typer.Option("1h", "--duration", help="1h, 4h, 8h, 12h or 1d."),
    ca_file: str | None = typer.Option(
        None, "--ca-file", help="PEM CA that signed the server's certificate."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password, then the TOTP code, from standard input."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the opening as JSON."),
) -> None:
    """Open HOST:PORT for this machine's address for a while, after password + TOTP."""
    asset, port = _target(target)
    base = _server(server)
    if protocol not in ("tcp", "udp"):
        raise typer.BadParameter("tcp or udp", param_hint="--protocol")
    if duration not in DURATIONS:
        raise typer.BadParameter(f"one of {', '.join(DURATIONS)}", param_hint="--duration")
    username = user or getpass.getuser().lower()
    if not _USERNAME.fullmatch(username):
        raise typer.BadParameter("a zerogate user name (a-z 0-9 . _ @ -)", param_hint="--user")
    password, code = _secrets(password_stdin)
    body = {"username": username, "password": password, "totp": code, "asset": asset, "port": port,
            "protocol": protocol, "duration": DURATIONS[duration]}  # fmt: skip
    try:
        response = httpx.post(base + API_PATH, json=body, verify=_context(ca_file), timeout=60)
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY" in str(exc):
            fail(f"the certificate of {base} is not trusted; pass the CA with --ca-file")
        fail(f"cannot reach {base}: {exc}")
    except httpx.HTTPError as exc:
        fail(f"the request to {base} failed: {exc}")
    if response.status_code != 201:
        fail(_refusal(response))
    opened: Any = response.json() if len(response.content) <= MAX_BODY else None
    if not isinstance(opened, dict):
        fail("the segment server's answer was not understood")
    if as_json:
        emit(opened, True)
        return
    try:
        until = (
            datetime.fromisoformat(str(opened.get("expires_at")))
            .astimezone()
            .strftime("%Y-%m-%d %H:%M:%S %Z")
        )
    except ValueError:
        fail("the segment server's answer was not understood")
    say(
        "[green]opened[/] {} {}/{} for {} until {}",
        opened.get("asset"), opened.get("protocol"), opened.get("port"), opened.get("source"), until,
    )  # fmt: skip
