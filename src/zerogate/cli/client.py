"""``zerogate client``: sign in, bring the split tunnel up, show it, take it down.

State lives in ``--state-dir`` (default /var/lib/zerogate/client, root only):
``client.json`` (controller URL, CA, user), ``session`` (the sign-in token),
and once the device is registered the same files an enrolled connector has
(``device.json``, ``credential``, ``wg.key``, ``device.key``, ``device.pem``).
``revoked`` marks a device the controller refused (until ``up --force``).
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from zerogate.agent.enrollment import DeviceRefused, register_client, resume_client
from zerogate.agent.settings import ClientSettings, ConfigError, load_settings
from zerogate.agent.state import DeviceIdentity, StateDir
from zerogate.cli.common import JsonOpt, ask, emit, err, errors_to_exit, fail, read_secret, say
from zerogate.client import daemon
from zerogate.model.snapshot import parse_snapshot
from zerogate.netops.command import CommandError
from zerogate.netops.controller_api import ControllerClient, fetch_ca
from zerogate.netops.dataplane import Dataplane
from zerogate.netops.wireguard import DEFAULT_INTERFACES, WgInterface, check_ifname

app = typer.Typer(
    help="Client: sign in and reach the applications your policies allow.", no_args_is_help=True
)

StateOpt = typer.Option(
    None, "--state-dir", help="Where the session and keys are kept (default /var/lib/zerogate/client)."
)
# One default name per role: wireguard-go's control socket /var/run/wireguard/NAME.sock
# is shared by every network namespace of the host, so two roles must not share a name.
InterfaceOpt = typer.Option(
    None,
    "--interface",
    help=f"WireGuard interface name (at most 15 characters, unique on the host; default {DEFAULT_INTERFACES['client']}).",
)
ConfigOpt = typer.Option(
    None, "--config", help="Settings file (default /etc/zerogate/client.toml when it exists).", dir_okay=False
)
FORCE_ADVICE = "to register this device again: zerogate client up --force"


def _settings(config: Path | None, state_dir: Path | None, interface: str | None = None) -> ClientSettings:
    """Flags > ZEROGATE_CLIENT_* > the settings file > defaults."""
    with errors_to_exit():
        if interface is not None:
            check_ifname(interface)  # the flag's own message
        try:
            return load_settings(
                ClientSettings, config=config, flags={"state_dir": state_dir, "interface": interface}
            )[0]
        except ConfigError as exc:
            fail(str(exc))


def _load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        fail("not signed in: run 'zerogate client login --url URL --pin PIN'")


def _session(state_dir: Path) -> tuple[dict[str, Any], str]:
    info = _load(StateDir(state_dir) / StateDir.CLIENT)
    try:
        token = StateDir(state_dir).read(StateDir.SESSION).strip()
    except FileNotFoundError:
        fail("not signed in: run 'zerogate client login'")
    expires = datetime.fromisoformat(info["expires_at"])
    if expires <= datetime.now(UTC):
        fail(f"the session ended at {expires:%Y-%m-%d %H:%M} UTC: run 'zerogate client login' again")
    return info, token


@app.command()
def login(
    url: str = typer.Option(None, "--url", help="Controller URL (default: the one used last time)."),
    pin: str = typer.Option(None, "--pin", help="Controller CA pin, sha256/... (needed with --url)."),
    username: str = typer.Option(None, "--username", "-u", help="Your account name."),
    totp: str = typer.Option(None, "--totp", help="Current code from your authenticator."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    state_dir: Path = StateOpt,
    config: Path = ConfigOpt,
) -> None:
    """Sign in with password + TOTP. The session lasts as the controller allows (default 12 h)."""
    state_dir = _settings(config, state_dir).state_dir
    with errors_to_exit():
        prior: dict[str, Any] = {}
        state = StateDir(state_dir)
        try:
            prior = state.read_json(StateDir.CLIENT)
        except (OSError, ValueError):
            pass
        if url:
            if not pin:
                fail("--pin is needed with --url (ask your admin for the controller's CA pin)")
            ca_pem = fetch_ca(url, pin).decode()
        elif prior:
            url, ca_pem = prior["url"], prior["ca_pem"]
        else:
            fail("first sign-in needs --url and --pin")
        username = ask("username", username or prior.get("username"))
        password = read_secret("password", password_stdin)
        totp = ask("TOTP code", totp)
        with ControllerClient(url, ca_pem.encode()) as c:
            r = c.post("/v1/auth/login", {"username": username, "password": password, "totp": totp})
        if r["kind"] != "user":
            fail("admin accounts cannot use the client: sign in with a user account")
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state.write(StateDir.SESSION, r["token"] + "\n")
        info = {"url": url.rstrip("/"), "ca_pem": ca_pem, "username": username, "expires_at": r["expires_at"]}
        state.write(StateDir.CLIENT, json.dumps(info, indent=2))
        say("Signed in as {} until {}. Next: zerogate client up", username, r["expires_at"])


def _register(state_dir: Path, info: dict[str, Any], token: str, name: str, interface: str) -> None:
    registration = register_client(state_dir, info, token, name, interface)
    if registration.moved_from_default_block:
        say(
            "[yellow]The default address block collides with a network this device is on; using {} instead.[/]",
            registration.device["address_block"],
            console=err,
        )


def _await_handshake(dp: Dataplane, gateway: str | None, endpoint: str | None, timeout: float = 15.0) -> bool:
    if daemon.await_handshake(dp, timeout):
        return True
    say(
        "[yellow]No handshake with gateway {} at {} after {} s: UDP to it may be blocked; "
        "the tunnel keeps trying.[/]",
        gateway,
        endpoint,
        f"{timeout:.0f}",
        console=err,
    )
    return False


@app.command()
def up(
    state_dir: Path = StateOpt,
    interface: str = InterfaceOpt,
    name: str = typer.Option(socket.gethostname()[:50], "--name", help="Device name shown to admins."),
    follow: bool = typer.Option(
        False, "--follow", help="Stay in the foreground and follow policy changes (routes, apps) live."
    ),
    force: bool = typer.Option(False, "--force", help="Register this device again with new keys."),
    as_json: bool = JsonOpt,
    config: Path = ConfigOpt,
) -> None:
    """Register this device (first time), then bring the split tunnel up.

    Only the destinations your policies allow are routed into the tunnel.
    Needs root (it creates a WireGuard interface).
    """
    settings = _settings(config, state_dir, interface)
    state_dir, interface = settings.state_dir, settings.interface
    with errors_to_exit():
        info, token = _session(state_dir)
        if force or not StateDir(state_dir).enrolled():
            _register(state_dir, info, token, name, interface)
        else:
            try:
                resume_client(state_dir, info, token)
            except DeviceRefused as exc:
                # The controller's message may give the same advice already: say it once.
                fail(exc.message if "--force" in exc.message else f"{exc.message}; {FORCE_ADVICE}")
        identity = DeviceIdentity.load(state_dir, "client")
        with identity.client(timeout=15) as c:
            snapshot = parse_snapshot("client", c.get("/v1/snapshot"))
        dp = Dataplane(interface, identity.wg_private_key)
        try:
            plan = daemon.bring_up(identity, snapshot, dp)
        except CommandError as exc:
            fail(str(exc))
        handshake = (
            _await_handshake(dp, plan.gateway, plan.endpoint, settings.handshake_timeout)
            if plan.peers
            else False
        )
        summary = {
            "interface": interface,
            "tunnel": "up" if handshake else "waiting for the gateway",
            "address": str(snapshot.address),
            "gateway": plan.gateway,
            "endpoint": plan.endpoint,
            "routes": list(plan.routes),
            "applications": list(snapshot.applications),
            "session_expires_at": _iso(snapshot.session_expires_at),
        }
        emit(summary, as_json)
        if not plan.peers:
            err.print("[yellow]No gateway is enrolled yet: the tunnel has nowhere to go.[/]")
        if follow:
            err.print("Following policy changes; Ctrl-C to stop (the tunnel stays up).")
            refused = daemon.follow(identity, snapshot, dp, settings.watch_seconds)
            if refused:
                fail(
                    "the controller no longer accepts this device (revoked by an admin, or its account "
                    f"disabled); {refused}; {FORCE_ADVICE}"
                )


@app.command()
def down(state_dir: Path = StateOpt, interface: str = InterfaceOpt, config: Path = ConfigOpt) -> None:
    """Take the tunnel down. The device stays registered; 'up' brings it back."""
    interface = _settings(config, state_dir, interface).interface
    with errors_to_exit():
        wg = WgInterface(interface)
        if not wg.exists():
            say("{} is not up.", interface)
            return
        wg.delete()
        say("{} is down.", interface)


@app.command()
def status(
    state_dir: Path = StateOpt,
    interface: str = InterfaceOpt,
    as_json: bool = JsonOpt,
    config: Path = ConfigOpt,
) -> None:
    """Address, gateway, last handshake, session and the applications you can reach."""
    settings = _settings(config, state_dir, interface)
    state_dir, interface = settings.state_dir, settings.interface
    with errors_to_exit():
        state = StateDir(state_dir)
        info = _load(state / StateDir.CLIENT)
        device: dict[str, Any] = {}
        if state.enrolled():
            device = state.read_json(StateDir.DEVICE)
        snapshot = daemon.cached_snapshot(state_dir)
        wg = WgInterface(interface)
        peers = wg.status()[1] if wg.exists() else []
        latest = max((p.latest_handshake for p in peers), default=0)
        handshake = (f"{int(time.time() - latest)} s ago" if latest else "never") if peers else None
        transfer = f"rx {sum(p.rx_bytes for p in peers)} B, tx {sum(p.tx_bytes for p in peers)} B"
        controller = daemon.ask_controller(state_dir, snapshot) if device else "not registered"
        tunnel = daemon.tunnel_state(state_dir, wg.exists(), latest)
        expires = datetime.fromisoformat(info["expires_at"])
        gateway = snapshot.gateways[0] if snapshot and snapshot.gateways else None
        emit(
            {
                "user": info["username"],
                "session": ("valid until " if expires > datetime.now(UTC) else "ENDED at ")
                + info["expires_at"],
                "tunnel": tunnel,
                "controller": controller,
                "address": device.get("address"),
                "gateway": gateway.name if gateway else None,
                "endpoint": f"{gateway.endpoint}:{gateway.port}" if gateway else None,
                "handshake": handshake,
                "transfer": transfer if peers else None,
                "applications": list(snapshot.applications) if snapshot else [],
                "routes": [str(r) for r in snapshot.routes] if snapshot else [],
            },
            as_json,
        )
        if tunnel == "revoked" and not as_json:
            say("[yellow]The controller refused this device (revoked):[/] {}", FORCE_ADVICE, console=err)
            if wg.exists():
                say("The tunnel carries nothing any more; remove it: sudo zerogate client down", console=err)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None
