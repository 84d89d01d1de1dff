"""``zerogate connector enroll`` / ``zerogate gateway enroll``.

Enrollment makes the device's keys on the device (a TLS client key with its
CSR, and the WireGuard key pair); only the CSR and the WireGuard *public* key
are sent. The result lands in the state directory, secrets 0600:
``device.key``, ``wg.key``, ``credential``; plus ``device.pem``, ``ca.pem``
and ``device.json``.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.model.snapshot import ConnectorSnapshot, parse_snapshot
from zerogate.netops.agent import DeviceIdentity, NotEnrolled, save_identity
from zerogate.netops.command import CommandError
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.netops.wireguard import DEFAULT_INTERFACES, REJECT_AFTER, WgInterface, check_ifname
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.install_string import parse_install_string
from zerogate.pki.wireguard import generate_keypair

connector_app = typer.Typer(
    help="Network connector: dials out to gateways and forwards into its site.", no_args_is_help=True
)
gateway_app = typer.Typer(
    help="Gateway: the public edge that clients and connectors meet at.", no_args_is_help=True
)


def enroll_device(
    role: str, install_string: str, name: str, state_dir: Path, force: bool
) -> dict[str, object]:
    marker = state_dir / "device.json"
    if marker.exists() and not force:
        fail(f"{state_dir} already holds an enrolled {role}; pass --force to replace it")
    info = parse_install_string(install_string)
    ca_pem = fetch_ca(info.controller_url, info.ca_pin)
    key_pem = generate_private_key()
    wg_private, wg_public = generate_keypair()
    with ControllerClient(info.controller_url, ca_pem) as c:
        r = c.post(
            "/v1/enroll",
            {
                "key": info.key,
                "name": name,
                "csr": create_csr(key_pem, name).decode(),
                "wg_public_key": wg_public,
            },
        )
    if r["role"] != role:
        fail(
            f"this install string enrolls a {r['role']}, not a {role}: run 'zerogate {r['role']} enroll' "
            f"(device {r['device_id']} was enrolled; an admin can revoke it)"
        )
    summary = {
        "role": role,
        "name": r["name"],
        "device_id": r["device_id"],
        "controller_url": info.controller_url,
        "ca_pin": info.ca_pin,
        "wg_public_key": wg_public,
    }
    save_identity(
        state_dir,
        key_pem=key_pem,
        wg_private=wg_private,
        credential=r["credential"],
        certificate=r["certificate"],
        ca_pem=ca_pem,
        info=summary,
    )
    return summary | {"state_dir": str(state_dir)}


def _command(role: str, app: typer.Typer) -> None:
    @app.command()
    def enroll(
        install_string: str = typer.Argument(
            ..., help="The line from 'zerogate admin key create' (starts with zg1.)."
        ),
        name: str = typer.Option(
            socket.gethostname()[:50], "--name", help="Name for this device (default: host name)."
        ),
        state_dir: Path = typer.Option(
            Path(f"/var/lib/zerogate/{role}"), "--state-dir", help="Where keys and credentials are kept."
        ),
        force: bool = typer.Option(False, "--force", help="Replace an existing enrollment in --state-dir."),
        as_json: bool = JsonOpt,
    ) -> None:
        """Enroll this host with an install string; its private keys never leave it."""
        with errors_to_exit():
            summary = enroll_device(role, install_string, name, state_dir, force)
        if as_json:
            emit(summary, True)
        else:
            say(
                "[green]Enrolled[/] {} {} as device {}; state in {}",
                role,
                summary["name"],
                summary["device_id"],
                state_dir,
            )

    enroll.__doc__ = f"Enroll this host as a {role} with an install string; its private keys never leave it."


_command("connector", connector_app)
_command("gateway", gateway_app)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(role: str, state_dir: Path, build: Callable[[DeviceIdentity], Any], keep: bool) -> None:
    """Run a daemon until SIGTERM/SIGINT; exit 1 with one line on a setup error."""
    try:
        identity = DeviceIdentity.load(state_dir, role)
    except (NotEnrolled, OSError, ValueError) as exc:
        fail(str(exc))
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        # The main thread may sit in a 25-s long-poll: interrupt it, once.
        if not stop.is_set():
            stop.set()
            raise StopRequested

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    daemon = build(identity)
    logging.getLogger("zerogate").info(
        "%s %s (device %d) starting; controller %s",
        role,
        identity.name,
        identity.device_id,
        identity.controller_url,
    )
    try:
        daemon.run(stop, keep_on_exit=keep)
    except StopRequested:
        pass
    except CommandError as exc:
        fail(str(exc))


class StopRequested(BaseException):
    """SIGTERM/SIGINT: unwinds whatever the main thread was waiting on; the daemon tears down."""


def _interface_option(role: str) -> Any:
    """Each role has its own default name: wireguard-go's control socket is one per host."""
    return typer.Option(
        DEFAULT_INTERFACES[role],
        "--interface",
        help="WireGuard interface name (at most 15 characters, unique on the host).",
    )


LogOpt = typer.Option("info", "--log-level", help="debug, info, warning or error.")
KeepOpt = typer.Option(
    False, "--keep-on-exit", help="Leave the tunnel and nftables table in place when stopping."
)


@connector_app.command("status")
def connector_status(
    state_dir: Path = typer.Option(Path("/var/lib/zerogate/connector"), "--state-dir"),
    interface: str = _interface_option("connector"),
    as_json: bool = JsonOpt,
) -> None:
    """The tunnel to the gateway as this host sees it: up or down, last handshake, what to check."""
    with errors_to_exit():
        try:
            device = json.loads((state_dir / "device.json").read_text())
        except FileNotFoundError:
            fail(f"{state_dir} holds no enrolled connector: run 'zerogate connector enroll' first")
        try:
            status = _tunnel_status(state_dir, check_ifname(interface))
        except CommandError as exc:
            fail(str(exc))
        emit({"name": device.get("name"), "device_id": device.get("device_id"), **status}, as_json)


def _tunnel_status(state_dir: Path, interface: str) -> dict[str, Any]:
    wg = WgInterface(interface)
    exists = wg.exists()
    peers = wg.status()[1] if exists else []
    latest = max((p.latest_handshake for p in peers), default=0)
    up = bool(latest) and time.time() - latest < REJECT_AFTER
    snapshot = _cached_snapshot(state_dir)
    gateways = snapshot.gateways if snapshot else ()
    endpoint = next((p.endpoint for p in peers if p.endpoint), None)
    return {
        "interface": interface,
        "tunnel": "up" if up else "down",
        "last_handshake_at": datetime.fromtimestamp(latest, UTC).isoformat() if latest else None,
        "gateway": gateways[0].name if gateways else None,
        "endpoint": endpoint,
        "tunnel_hint": None if up else _down_hint(interface, exists, snapshot, endpoint, latest),
    }


def _cached_snapshot(state_dir: Path) -> ConnectorSnapshot | None:
    """The last configuration the daemon applied (its snapshot.json), or None."""
    try:
        return parse_snapshot("connector", json.loads((state_dir / "snapshot.json").read_text()))
    except (OSError, ValueError):
        return None


def _down_hint(
    interface: str, exists: bool, snapshot: ConnectorSnapshot | None, endpoint: str | None, latest: int
) -> str:
    from zerogate.connector.daemon import tunnel_hint  # the daemon logs and reports the same advice

    if not exists:
        return (
            f"there is no interface {interface} on this host: check that 'zerogate connector run' is running "
            "(systemctl status zerogate-connector) and uses this --interface"
        )
    if snapshot is None or not snapshot.gateways:
        return "no gateway in the last configuration: check that a gateway is enrolled and this host reaches the controller"
    since = f"none for {int(time.time() - latest)} s" if latest else "never one"
    return f"no WireGuard handshake with the gateway ({since}): {tunnel_hint(snapshot.gateways, endpoint)}"


@gateway_app.command("run")
def gateway_run(
    state_dir: Path = typer.Option(Path("/var/lib/zerogate/gateway"), "--state-dir"),
    interface: str = _interface_option("gateway"),
    log_level: str = LogOpt,
    keep_on_exit: bool = KeepOpt,
) -> None:
    """Run the gateway: WireGuard for clients and connectors, routes, and policy in nftables.

    Follows the controller's snapshot (long-poll) and keeps forwarding with the
    last good one while the controller is unreachable. Needs root (CAP_NET_ADMIN,
    CAP_NET_RAW for connector probes).
    """
    from zerogate.gateway.daemon import Gateway

    setup_logging(log_level)
    _serve("gateway", state_dir, lambda ident: Gateway(ident, check_ifname(interface)), keep_on_exit)


@connector_app.command("run")
def connector_run(
    state_dir: Path = typer.Option(Path("/var/lib/zerogate/connector"), "--state-dir"),
    interface: str = _interface_option("connector"),
    listen_port: int = typer.Option(
        51820,
        "--listen-port",
        min=1,
        max=65535,
        help="Local UDP port of the tunnel; only replies from the dialled gateway are accepted on it.",
    ),
    log_level: str = LogOpt,
    keep_on_exit: bool = KeepOpt,
) -> None:
    """Run the connector: dial out to the gateway and forward into the fronted subnets only.

    Opens no listening socket besides WireGuard's own. Needs root (CAP_NET_ADMIN).
    """
    from zerogate.connector.daemon import ConnectorDaemon

    setup_logging(log_level)
    _serve(
        "connector",
        state_dir,
        lambda ident: ConnectorDaemon(ident, check_ifname(interface), listen_port),
        keep_on_exit,
    )
