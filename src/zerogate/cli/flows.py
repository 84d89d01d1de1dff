"""``zerogate admin flows``: who reached what, when: the gateways' flow records.

Filters go to the controller (``GET /v1/flows``), which pages by record id;
this follows the pages up to ``--limit`` records. ``--json`` prints JSON lines
(one record per line, ASCII only), for SIEMs and scripts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer

from zerogate.cli.common import emit, errors_to_exit, fail
from zerogate.cli.report_history import parse_since
from zerogate.cli.session import client

PAGE = 1000  # the API's largest page
COLUMNS = [
    "start",
    "duration",
    "user",
    "device",
    "client",
    "destination",
    "protocol",
    "port",
    "application",
    "verdict",
    "bytes_out",
    "bytes_in",
]


def fetch(params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` records matching ``params``, oldest first, page by page."""
    out: list[dict[str, Any]] = []
    after = 0
    with errors_to_exit(), client() as c:
        while len(out) < limit:
            page = c.get("/v1/flows", {**params, "after_id": after, "limit": min(PAGE, limit - len(out))})
            if not isinstance(page, list) or not page:
                break
            out += page
            after = int(page[-1]["id"])
            if len(page) < PAGE:
                break
    return out[:limit]


def flows(
    user: str = typer.Option(None, "--user", help="Only this user's flows."),
    app: str = typer.Option(None, "--app", help="Only flows to this application."),
    since: str = typer.Option(None, "--since", help="30m, 6h, 2d (ago) or an ISO 8601 time."),
    denied: bool = typer.Option(False, "--denied", help="Only refused flows."),
    limit: int = typer.Option(1000, "--limit", min=1, max=100_000, help="At most this many records."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one record per line."),
) -> None:
    """Flows the gateways forwarded (user, device, destination, application, policy,
    bytes each way) or refused (--denied), oldest first."""
    params: dict[str, Any] = {}
    if user:
        params["user"] = user
    if app:
        params["app"] = app
    if denied:
        params["denied"] = "true"
    if since:
        try:
            params["since"] = parse_since(since, datetime.now(UTC)).isoformat()
        except ValueError:
            fail("--since: expected 30m, 6h, 2d or an ISO 8601 time")
    rows = fetch(params, limit)
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, ensure_ascii=True))
        return
    for row in rows:
        row["verdict"] = f"refused ({row['denied']})" if row.get("denied") else row.get("policy")
    emit(rows, False, COLUMNS)
