"""``zerogate connector`` / ``zerogate gateway``: enroll, run, status.

The work lives in :mod:`zerogate.agent` (enrollment, state directory, runtime)
and the daemons; this module parses flags and prints.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from zerogate.agent import enrollment
from zerogate.agent.runtime import Daemon, run_until_signalled
from zerogate.agent.settings import ConfigError, ConnectorSettings, GatewaySettings, describe, load_settings
from zerogate.agent.state import DeviceIdentity, NotEnrolled, StateDir
from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.netops.command import CommandError
from zerogate.netops.wireguard import DEFAULT_INTERFACES, check_ifname

S = TypeVar("S", GatewaySettings, ConnectorSettings)

connector_app = typer.Typer(
    help="Network connector: dials out to gateways and forwards into its site.", no_args_is_help=True
)
gateway_app = typer.Typer(
    help="Gateway: the public edge that clients and connectors meet at.", no_args_is_help=True
)


def enroll_device(
    role: str, install_string: str, name: str, state_dir: Path, force: bool
) -> dict[str, object]:
    """:func:`zerogate.agent.enrollment.enroll_device`, its refusals as one line and exit 1."""
    try:
        return enrollment.enroll_device(role, install_string, name, state_dir, force)
    except enrollment.EnrollmentError as exc:
        fail(str(exc))


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


def _serve(
    role: str,
    state_dir: Path,
    build: Callable[[DeviceIdentity], Daemon],
    keep: bool,
    metrics_listen: str = "",
) -> None:
    """Run a daemon until SIGTERM/SIGINT (its /metrics on ``metrics_listen``, if set); exit 1
    with one line on a setup error."""
    try:
        identity = DeviceIdentity.load(state_dir, role)
    except (NotEnrolled, OSError, ValueError) as exc:
        fail(str(exc))
    try:
        run_until_signalled(identity, build, keep, metrics_listen)
    except CommandError as exc:
        fail(str(exc))


def _interface_option(role: str, default: str | None = None) -> Any:
    """Each role has its own default name: wireguard-go's control socket is one per host."""
    return typer.Option(
        default,
        "--interface",
        help=f"WireGuard interface name (at most 15 characters, unique on the host; default {DEFAULT_INTERFACES[role]}).",
    )


LogOpt = typer.Option(None, "--log-level", help="debug, info, warning or error (default info).")
KeepOpt = typer.Option(
    False, "--keep-on-exit", help="Leave the tunnel and nftables table in place when stopping."
)


@connector_app.command("status")
def connector_status(
    state_dir: Path = typer.Option(Path("/var/lib/zerogate/connector"), "--state-dir"),
    interface: str = _interface_option("connector", DEFAULT_INTERFACES["connector"]),
    as_json: bool = JsonOpt,
) -> None:
    """The tunnel to the gateway as this host sees it: up or down, last handshake, what to check."""
    from zerogate.connector.status import tunnel_status

    with errors_to_exit():
        try:
            device = json.loads(StateDir(state_dir).read(StateDir.DEVICE))
        except FileNotFoundError:
            fail(f"{state_dir} holds no enrolled connector: run 'zerogate connector enroll' first")
        try:
            status = tunnel_status(state_dir, check_ifname(interface))
        except CommandError as exc:
            fail(str(exc))
        shown = {"name": device.get("name"), "device_id": device.get("device_id"), **status}
        vrrp = None if as_json else shown.pop("vrrp", None)
        if vrrp:  # a table row per field; the keepalived config as it is, after the table
            config = vrrp.pop("config", None)
            shown |= {f"vrrp_{key}": value for key, value in vrrp.items()}
        emit(shown, as_json)
        if vrrp and config:
            typer.echo(f"\n{shown['vrrp_config_path']}:\n{config}", nl=False)


ConfigOpt = typer.Option(
    None, "--config", help="Settings file (default /etc/zerogate/ROLE.toml when it exists).", dir_okay=False
)
CheckOpt = typer.Option(
    False, "--check", help="Validate the settings, print them, and exit without starting."
)


def _settings(cls: type[S], config: Path | None, flags: dict[str, Any], check: bool) -> S:
    """The effective settings (flags > ZEROGATE_ROLE_* > file > defaults); with
    ``check``, print them and exit."""
    try:
        settings, path = load_settings(cls, config=config, flags=flags)
    except ConfigError as exc:
        fail(str(exc))
    if check:
        emit(describe(settings, path), False)
        say("[green]OK[/] the {} settings are valid", cls.role)
        raise typer.Exit(0)
    return settings


@gateway_app.command("run")
def gateway_run(
    state_dir: Path = typer.Option(None, "--state-dir", help="Default /var/lib/zerogate/gateway."),
    interface: str = _interface_option("gateway"),
    log_level: str = LogOpt,
    keep_on_exit: bool = KeepOpt,
    config: Path = ConfigOpt,
    check: bool = CheckOpt,
) -> None:
    """Run the gateway: WireGuard for clients and connectors, routes, and policy in nftables.

    Follows the controller's snapshot (long-poll) and keeps forwarding with the
    last good one while the controller is unreachable. Needs root (CAP_NET_ADMIN,
    CAP_NET_RAW for connector probes).
    """
    flags = {"state_dir": state_dir, "interface": interface, "log_level": log_level}
    settings = _settings(GatewaySettings, config, flags, check)
    from zerogate.gateway.daemon import Gateway
    from zerogate.netops.dataplane import Dataplane

    setup_logging(settings.log_level)

    def build(ident: DeviceIdentity) -> Gateway:
        return Gateway(
            ident,
            Dataplane(settings.interface, ident.wg_private_key),
            probe_interval=settings.probe_interval,
            down_after=settings.down_after,
            watch_seconds=settings.watch_seconds,
            report_interval=settings.report_interval,
            flow_records=settings.flow_records,
        )

    _serve("gateway", settings.state_dir, build, keep_on_exit, settings.metrics_listen)


@connector_app.command("run")
def connector_run(
    state_dir: Path = typer.Option(None, "--state-dir", help="Default /var/lib/zerogate/connector."),
    interface: str = _interface_option("connector"),
    listen_port: int = typer.Option(
        None,
        "--listen-port",
        min=1,
        max=65535,
        help="Local UDP port of the tunnel (default 51820); only replies from the dialled gateway are accepted on it.",
    ),
    log_level: str = LogOpt,
    keep_on_exit: bool = KeepOpt,
    config: Path = ConfigOpt,
    check: bool = CheckOpt,
) -> None:
    """Run the connector: dial out to the gateway and forward into the fronted subnets only.

    Opens no listening socket besides WireGuard's own. Needs root (CAP_NET_ADMIN).
    """
    flags = {
        "state_dir": state_dir,
        "interface": interface,
        "log_level": log_level,
        "listen_port": listen_port,
    }
    settings = _settings(ConnectorSettings, config, flags, check)
    from ipaddress import IPv4Address

    from zerogate.connector.daemon import ConnectorDaemon
    from zerogate.connector.vrrp import VrrpOptions
    from zerogate.netops.dataplane import Dataplane

    setup_logging(settings.log_level)
    vrrp = VrrpOptions(
        peers=tuple(IPv4Address(p) for p in settings.vrrp_peers),
        priority=settings.vrrp_priority,
        preempt=settings.vrrp_preempt,
        router_id=settings.vrrp_router_id,
        advert_interval=settings.vrrp_advert_interval,
    )

    def build(ident: DeviceIdentity) -> ConnectorDaemon:
        return ConnectorDaemon(
            ident,
            Dataplane(settings.interface, ident.wg_private_key),
            settings.listen_port,
            keepalive=settings.keepalive,
            watch_seconds=settings.watch_seconds,
            report_interval=settings.report_interval,
            vrrp=vrrp,
        )

    _serve("connector", settings.state_dir, build, keep_on_exit, settings.metrics_listen)
