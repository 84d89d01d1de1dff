"""``zerogate admin controller``: the controllers of a deployment.

``join-secret`` makes the one-time secret that ``zerogate controller join``
needs (shown once; the controller keeps only its hash); ``list`` shows each
controller with online/offline from its heartbeat.
"""

from __future__ import annotations

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, say, visible
from zerogate.cli.session import client

app = typer.Typer(help="Controllers of this deployment: join secrets, health.", no_args_is_help=True)


@app.command("join-secret")
def join_secret(
    ttl: int = typer.Option(60, "--ttl-minutes", min=1, max=24 * 60, help="Lifetime of the secret."),
    as_json: bool = JsonOpt,
) -> None:
    """Make a one-time secret for 'zerogate controller join' (shown once)."""
    with errors_to_exit(), client() as c:
        r = c.post("/v1/controllers/join-secrets", {"ttl_minutes": ttl})
    if as_json:
        emit(r, True)
        return
    say("One-time join secret (shown only now, valid until {}):", r["expires_at"])
    print(visible(r["secret"]))
    say(
        "On the new controller's host, put it in a file readable only by root and run:\n"
        "  zerogate controller join --database postgresql://... --data-dir DIR --name HOST --secret-file FILE"
    )


@app.command("list")
def controller_list(as_json: bool = JsonOpt) -> None:
    """Each controller with its URL, version and online/offline (3 missed heartbeats: offline)."""
    with errors_to_exit(), client() as c:
        emit(
            c.get("/v1/controllers"), as_json, ["name", "status", "url", "version", "started_at", "last_seen"]
        )
