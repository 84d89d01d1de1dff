"""``zerogate admin device history NAME``: a device's report samples over time.

The controller keeps one sample of each device's report per
``report_history_interval`` for ``report_history_days``; this prints them oldest
first, as a table or as JSON (``GET /v1/devices/{id}/history``, followed page
by page).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.cli.session import client

_RELATIVE = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PAGE = 10080  # the API's largest page
MAX_PAGES = 20  # ~200,000 samples: far past a week of one device at any interval

COLUMNS = [
    "at",
    "peers",
    "client_peers",
    "handshake_age_max",
    "rx_bytes",
    "tx_bytes",
    "connectors_up",
    "connectors_active",
    "tunnel_up",
    "nft_apply_ms",
    "failovers",
]


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``6h``, ``2d`` (ago) or an ISO 8601 time (UTC when it has no zone)."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now - timedelta(seconds=int(relative[1]) * _UNIT[relative[2]])
    if len(text) > 40 or not re.fullmatch(r"[0-9T:.+\- Z]+", text):
        raise ValueError
    at = datetime.fromisoformat(text)
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _find(devices: list[dict[str, Any]], name: str, role: str | None) -> dict[str, Any]:
    found = [d for d in devices if d["name"] == name and (role is None or d["role"] == role)]
    if not found and name.isdigit():
        found = [d for d in devices if d["id"] == int(name)]
    if not found:
        fail("no such device (see 'zerogate admin device list')")
    active = [d for d in found if d["status"] == "active"] or found
    if len(active) > 1:
        fail("several devices have this name: give --role or the device id instead")
    return active[0]


def device_history(
    name: str = typer.Argument(..., help="The device's name (or its id, see 'device list')."),
    since: str = typer.Option("24h", "--since", help="30m, 6h, 2d (ago) or an ISO 8601 time."),
    role: str = typer.Option(None, "--role", help="gateway, connector, client or segment (same names)."),
    as_json: bool = JsonOpt,
) -> None:
    """A device's report samples (peers, handshake age, bytes, connectors, nftables, failovers)."""
    try:
        after = parse_since(since, datetime.now(UTC))
    except ValueError:
        fail("--since takes 30m, 6h, 2d (ago) or an ISO 8601 time such as 2026-12-06T04:00:00Z")
    with errors_to_exit(), client() as c:
        device = _find(c.get("/v1/devices", {"role": role} if role else None), name, role)
        path = f"/v1/devices/{device['id']}/history"
        page = c.get(path, {"since": after.isoformat(), "limit": PAGE})
        result, samples = page, list(page["samples"])
        for _ in range(MAX_PAGES - 1):
            if not page["more"] or not page["samples"]:
                break
            page = c.get(path, {"since": page["samples"][-1]["at"], "limit": PAGE})
            samples += page["samples"]
    result = result | {"samples": samples, "more": page["more"]}
    if as_json:
        emit(result, True)
        return
    emit(samples, False, COLUMNS)
    say(
        "{} {} (device {}): {} samples, one per {} s at most, kept {} days",
        result["role"],
        result["name"],
        result["device_id"],
        len(samples),
        result["interval_seconds"],
        result["retention_days"],
    )
