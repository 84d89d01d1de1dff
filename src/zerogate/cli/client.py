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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from zerogate.cli.common import JsonOpt, ask, emit, err, errors_to_exit, fail, read_secret, say
from zerogate.client.plan import ClientPlan, plan_client
from zerogate.model.snapshot import ClientSnapshot, RevokedSnapshot, parse_snapshot
from zerogate.netops import links
from zerogate.netops.agent import DeviceIdentity, SnapshotFollower, save_identity, write_private
from zerogate.netops.command import CommandError
from zerogate.netops.controller_api import ApiError, ControllerClient, ControllerError, fetch_ca
from zerogate.netops.dataplane import Dataplane
from zerogate.netops.wireguard import DEFAULT_INTERFACES, REJECT_AFTER, WgInterface, check_ifname
from zerogate.pki.ca import create_csr, generate_private_key
from zerogate.pki.wireguard import generate_keypair

app = typer.Typer(
    help="Client: sign in and reach the applications your policies allow.", no_args_is_help=True
)

StateOpt = typer.Option(
    Path("/var/lib/zerogate/client"), "--state-dir", help="Where the session and keys are kept."
)
# One default name per role: wireguard-go's control socket /var/run/wireguard/NAME.sock
# is shared by every network namespace of the host, so two roles must not share a name.
InterfaceOpt = typer.Option(
    DEFAULT_INTERFACES["client"],
    "--interface",
    help="WireGuard interface name (at most 15 characters, unique on the host).",
)
STATUS_TIMEOUT = 3.0  # 'client status' asks the controller once, briefly
FORCE_ADVICE = "to register this device again: zerogate client up --force"


def _load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        fail("not signed in: run 'zerogate client login --url URL --pin PIN'")


def _session(state_dir: Path) -> tuple[dict[str, Any], str]:
    info = _load(state_dir / "client.json")
    try:
        token = (state_dir / "session").read_text().strip()
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
) -> None:
    """Sign in with password + TOTP. The session lasts as the controller allows (default 12 h)."""
    with errors_to_exit():
        prior: dict[str, Any] = {}
        try:
            prior = json.loads((state_dir / "client.json").read_text())
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
        write_private(state_dir / "session", r["token"] + "\n")
        info = {"url": url.rstrip("/"), "ca_pem": ca_pem, "username": username, "expires_at": r["expires_at"]}
        write_private(state_dir / "client.json", json.dumps(info, indent=2))
        say("Signed in as {} until {}. Next: zerogate client up", username, r["expires_at"])


def _register(state_dir: Path, info: dict[str, Any], token: str, name: str, interface: str) -> dict[str, Any]:
    key_pem = generate_private_key()
    wg_private, wg_public = generate_keypair()
    local = [str(n) for n in links.local_networks(exclude=[interface]) if n.version == 4]
    with ControllerClient(info["url"], info["ca_pem"].encode(), token=token) as c:
        r = c.post(
            "/v1/clients",
            {
                "name": name,
                "csr": create_csr(key_pem, name).decode(),
                "wg_public_key": wg_public,
                "local_networks": local,
            },
        )
    device = {
        "role": "client",
        "name": r["name"],
        "device_id": r["device_id"],
        "controller_url": info["url"],
        "address": r["address"],
        "address_block": r["address_block"],
        "wg_public_key": wg_public,
    }
    save_identity(
        state_dir,
        key_pem=key_pem,
        wg_private=wg_private,
        credential=r["credential"],
        certificate=r["certificate"],
        ca_pem=info["ca_pem"].encode(),
        info=device,
    )
    (state_dir / "revoked").unlink(missing_ok=True)
    if r["moved_from_default_block"]:
        say(
            "[yellow]The default address block collides with a network this device is on; using {} instead.[/]",
            r["address_block"],
            console=err,
        )
    return device


def _bring_up(
    identity: DeviceIdentity, interface: str, snapshot: ClientSnapshot, dp: Dataplane
) -> ClientPlan:
    plan = plan_client(snapshot)
    dp.apply(listen_port=None, peers=plan.peers, addresses=(plan.address,), routes=plan.routes, nft_body=None)
    text = json.dumps(snapshot.model_dump(mode="json"), sort_keys=True)
    write_private(identity.state_dir / "snapshot.json", text)
    return plan


def _await_handshake(dp: Dataplane, plan: ClientPlan, timeout: float = 15.0) -> bool:
    """Wait until the gateway answers our handshake (it learns new devices within about a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, peers = dp.status()
        if any(p.latest_handshake for p in peers):
            return True
        time.sleep(0.2)
    say(
        "[yellow]No handshake with gateway {} at {} after {} s: UDP to it may be blocked; "
        "the tunnel keeps trying.[/]",
        plan.gateway,
        plan.endpoint,
        f"{timeout:.0f}",
        console=err,
    )
    return False


def _follow(identity: DeviceIdentity, interface: str, snapshot: ClientSnapshot, dp: Dataplane) -> None:
    """Apply policy changes until Ctrl-C; exit 1 with one message when the controller
    refuses the device (revoked), after removing the tunnel and the cached snapshot."""
    stop = threading.Event()
    refused: list[str] = []

    def apply(snap: ClientSnapshot | RevokedSnapshot) -> None:
        if isinstance(snap, RevokedSnapshot):
            stop.set()
            refused.append(_tear_down_refused(identity.state_dir, dp))
            return
        _bring_up(identity, interface, snap, dp)

    follower = SnapshotFollower(identity, ClientSnapshot, apply)
    follower.snapshot = snapshot
    err.print("Following policy changes; Ctrl-C to stop (the tunnel stays up).")
    try:
        follower.run(stop)
    except KeyboardInterrupt:
        stop.set()
    if refused:
        fail(
            f"the controller no longer accepts this device (revoked by an admin, or its account disabled); "
            f"{refused[0]}; {FORCE_ADVICE}"
        )


def _tear_down_refused(state_dir: Path, dp: Dataplane) -> str:
    """Remove what a refused device must not keep; say what was done."""
    write_private(state_dir / "revoked", datetime.now(UTC).isoformat() + "\n")
    (state_dir / "snapshot.json").unlink(missing_ok=True)
    try:
        dp.wg.delete()  # its routes go with it
    except CommandError as exc:
        return f"could not remove the tunnel interface {dp.interface} ({exc}): remove it with 'ip link delete {dp.interface}'"
    return f"removed the tunnel interface {dp.interface} and its routes"


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
) -> None:
    """Register this device (first time), then bring the split tunnel up.

    Only the destinations your policies allow are routed into the tunnel.
    Needs root (it creates a WireGuard interface).
    """
    with errors_to_exit():
        check_ifname(interface)
        info, token = _session(state_dir)
        if force or not (state_dir / "device.json").exists():
            _register(state_dir, info, token, name, interface)
        else:
            device = json.loads((state_dir / "device.json").read_text())
            with ControllerClient(info["url"], info["ca_pem"].encode(), token=token) as c:
                try:
                    c.post(f"/v1/clients/{device['device_id']}/session")
                except ApiError as exc:
                    if exc.status in (403, 404):
                        # The controller's message may give the same advice already: say it once.
                        fail(exc.message if "--force" in exc.message else f"{exc.message}; {FORCE_ADVICE}")
                    raise
        identity = DeviceIdentity.load(state_dir, "client")
        with identity.client(timeout=15) as c:
            snapshot = parse_snapshot("client", c.get("/v1/snapshot"))
        dp = Dataplane(interface, identity.wg_private_key)
        try:
            plan = _bring_up(identity, interface, snapshot, dp)
        except CommandError as exc:
            fail(str(exc))
        handshake = _await_handshake(dp, plan) if plan.peers else False
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
            _follow(identity, interface, snapshot, dp)


@app.command()
def down(state_dir: Path = StateOpt, interface: str = InterfaceOpt) -> None:
    """Take the tunnel down. The device stays registered; 'up' brings it back."""
    with errors_to_exit():
        wg = WgInterface(check_ifname(interface))
        if not wg.exists():
            say("{} is not up.", interface)
            return
        wg.delete()
        say("{} is down.", interface)


@app.command()
def status(state_dir: Path = StateOpt, interface: str = InterfaceOpt, as_json: bool = JsonOpt) -> None:
    """Address, gateway, last handshake, session and the applications you can reach."""
    with errors_to_exit():
        info = _load(state_dir / "client.json")
        device: dict[str, Any] = {}
        if (state_dir / "device.json").exists():
            device = json.loads((state_dir / "device.json").read_text())
        snapshot = _cached_snapshot(state_dir)
        wg = WgInterface(check_ifname(interface))
        peers = wg.status()[1] if wg.exists() else []
        latest = max((p.latest_handshake for p in peers), default=0)
        handshake = (f"{int(time.time() - latest)} s ago" if latest else "never") if peers else None
        transfer = f"rx {sum(p.rx_bytes for p in peers)} B, tx {sum(p.tx_bytes for p in peers)} B"
        controller = _ask_controller(state_dir, snapshot) if device else "not registered"
        tunnel = _tunnel_state(state_dir, wg.exists(), latest)
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


def _ask_controller(state_dir: Path, snapshot: ClientSnapshot | None) -> str:
    """Whether the controller still accepts this device ("accepts", "refuses" or
    "unreachable: ..."), in one quick request. A refusal is remembered (the
    ``revoked`` marker), so that the status never shows a revoked device as up:
    the gateway has dropped it, only the handshake timers have not run out yet."""
    if (state_dir / "revoked").exists():
        return "refuses"
    try:
        identity = DeviceIdentity.load(state_dir, "client")
        with identity.client(timeout=STATUS_TIMEOUT) as c:
            c.get("/v1/snapshot", {"after": snapshot.revision if snapshot else -1, "wait": 0})
    except ApiError as exc:
        if exc.status in (401, 403):
            write_private(state_dir / "revoked", datetime.now(UTC).isoformat() + "\n")
            return "refuses"
        return f"unreachable: {exc.message}"
    except (ControllerError, OSError, ValueError) as exc:
        return f"unreachable: {exc}"
    return "accepts"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _cached_snapshot(state_dir: Path) -> ClientSnapshot | None:
    """The snapshot the tunnel was last brought up with (snapshot.json), if any."""
    path = state_dir / "snapshot.json"
    if not path.exists():
        return None
    try:
        return parse_snapshot("client", json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _tunnel_state(state_dir: Path, exists: bool, latest_handshake: int) -> str:
    """revoked, down (no interface), up (a handshake within 180 s) or waiting for the gateway."""
    if (state_dir / "revoked").exists():
        return "revoked"
    if not exists:
        return "down"
    if latest_handshake and time.time() - latest_handshake < REJECT_AFTER:
        return "up"
    return "waiting for the gateway"
