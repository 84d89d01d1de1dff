"""``zerogate connector status``: the tunnel to the gateway as this host sees it,
read from the interface and the daemon's last applied snapshot (no controller)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zerogate.agent.state import StateDir
from zerogate.connector.daemon import tunnel_hint
from zerogate.connector.vrrp import CONF_NAME, PID_NAME, STATE_NAME
from zerogate.model.snapshot import ConnectorSnapshot, parse_snapshot
from zerogate.netops.wireguard import REJECT_AFTER, WgInterface


def tunnel_status(state_dir: Path, interface: str) -> dict[str, Any]:
    """up or down, last handshake, gateway and endpoint, and what to check while down."""
    wg = WgInterface(interface)
    exists = wg.exists()
    peers = wg.status()[1] if exists else []
    latest = max((p.latest_handshake for p in peers), default=0)
    up = bool(latest) and time.time() - latest < REJECT_AFTER
    snapshot = cached_snapshot(state_dir)
    gateways = snapshot.gateways if snapshot else ()
    endpoint = next((p.endpoint for p in peers if p.endpoint), None)
    return {
        "interface": interface,
        "tunnel": "up" if up else "down",
        "last_handshake_at": datetime.fromtimestamp(latest, UTC).isoformat() if latest else None,
        "gateway": gateways[0].name if gateways else None,
        "endpoint": endpoint,
        "tunnel_hint": None if up else down_hint(interface, exists, snapshot, endpoint, latest),
        "vrrp": vrrp_status(state_dir, snapshot),
    }


def vrrp_status(state_dir: Path, snapshot: ConnectorSnapshot | None) -> dict[str, Any] | None:
    """The group's VRRP as the daemon last recorded it: state, virtual IP, interface,
    router id, whether keepalived runs, and the config it was given (path and text)."""
    group = snapshot.connector_group if snapshot else None
    conf = state_dir / CONF_NAME
    if (group is None or group.vrrp_virtual_ip is None) and not conf.exists():
        return None
    try:
        recorded = json.loads((state_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    try:
        text: str | None = conf.read_text()
    except OSError:
        text = None
    running = _running(state_dir / PID_NAME)
    return {
        # what keepalived last said; a record left by a keepalived that no longer runs says nothing
        "state": str(recorded.get("state", "unknown")).lower() if running else "stopped",
        "since": recorded.get("since"),
        "virtual_ip": str(group.vrrp_virtual_ip) if group and group.vrrp_virtual_ip else None,
        "interface": recorded.get("interface"),
        "router_id": recorded.get("router_id"),
        "keepalived_running": running,
        "config_path": str(conf),
        "config": text,
    }


def _running(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
        return pid > 0 and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"keepalived")
    except (OSError, ValueError):
        return False


def cached_snapshot(state_dir: Path) -> ConnectorSnapshot | None:
    """The last configuration the daemon applied (its snapshot.json), or None."""
    try:
        return parse_snapshot("connector", json.loads(StateDir(state_dir).read(StateDir.SNAPSHOT)))
    except (OSError, ValueError):
        return None


def down_hint(
    interface: str, exists: bool, snapshot: ConnectorSnapshot | None, endpoint: str | None, latest: int
) -> str:
    """The same advice the daemon logs and reports, for a tunnel that is not up."""
    if not exists:
        return (
            f"there is no interface {interface} on this host: check that 'zerogate connector run' is running "
            "(systemctl status zerogate-connector) and uses this --interface"
        )
    if snapshot is None or not snapshot.gateways:
        return "no gateway in the last configuration: check that a gateway is enrolled and this host reaches the controller"
    since = f"none for {int(time.time() - latest)} s" if latest else "never one"
    return f"no WireGuard handshake with the gateway ({since}): {tunnel_hint(snapshot.gateways, endpoint)}"
