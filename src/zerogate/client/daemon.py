"""What ``zerogate client`` does to this host: bring the split tunnel up from a
snapshot, follow policy changes in the foreground, tear down a refused device,
and tell the tunnel's state. Output is left to :mod:`zerogate.cli.client`."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from zerogate.agent.backend import DataplaneBackend
from zerogate.agent.follower import SnapshotFollower
from zerogate.agent.state import DeviceIdentity, StateDir
from zerogate.client.plan import ClientPlan, plan_client
from zerogate.model.snapshot import ClientSnapshot, RevokedSnapshot, parse_snapshot
from zerogate.netops.command import CommandError
from zerogate.netops.controller_api import ApiError, ControllerError
from zerogate.netops.wireguard import REJECT_AFTER

STATUS_TIMEOUT = 3.0  # 'client status' asks the controller once, briefly


def bring_up(identity: DeviceIdentity, snapshot: ClientSnapshot, dp: DataplaneBackend) -> ClientPlan:
    """Apply the snapshot's plan to the tunnel and keep the snapshot as the last one applied."""
    plan = plan_client(snapshot)
    dp.apply(listen_port=None, peers=plan.peers, addresses=(plan.address,), routes=plan.routes, nft_body=None)
    identity.state.write(StateDir.SNAPSHOT, json.dumps(snapshot.model_dump(mode="json"), sort_keys=True))
    return plan


def await_handshake(dp: DataplaneBackend, timeout: float = 15.0) -> bool:
    """Wait until the gateway answers our handshake (it learns new devices within about a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, peers = dp.status()
        if any(p.latest_handshake for p in peers):
            return True
        time.sleep(0.2)
    return False


def follow(
    identity: DeviceIdentity,
    snapshot: ClientSnapshot,
    dp: DataplaneBackend,
    watch_seconds: float | None = None,
) -> str | None:
    """Apply policy changes until Ctrl-C. When the controller refuses the device
    (revoked), remove the tunnel and the cached snapshot and return what was done."""
    stop = threading.Event()
    refused: list[str] = []

    def apply(snap: ClientSnapshot | RevokedSnapshot) -> None:
        if isinstance(snap, RevokedSnapshot):
            stop.set()
            refused.append(tear_down_refused(identity.state_dir, dp))
            return
        bring_up(identity, snap, dp)

    follower = SnapshotFollower(identity, ClientSnapshot, apply, watch_seconds=watch_seconds)
    follower.snapshot = snapshot
    try:
        follower.run(stop)
    except KeyboardInterrupt:
        stop.set()
    return refused[0] if refused else None


def tear_down_refused(state_dir: Path, dp: DataplaneBackend) -> str:
    """Remove what a refused device must not keep; say what was done."""
    state = StateDir(state_dir)
    state.write(StateDir.REVOKED, datetime.now(UTC).isoformat() + "\n")
    state.remove(StateDir.SNAPSHOT)
    try:
        dp.remove_interface()  # its routes go with it
    except CommandError as exc:
        return f"could not remove the tunnel interface {dp.interface} ({exc}): remove it with 'ip link delete {dp.interface}'"
    return f"removed the tunnel interface {dp.interface} and its routes"


def ask_controller(state_dir: Path, snapshot: ClientSnapshot | None) -> str:
    """Whether the controller still accepts this device ("accepts", "refuses" or
    "unreachable: ..."), in one quick request. A refusal is remembered (the
    ``revoked`` marker), so that the status never shows a revoked device as up:
    the gateway has dropped it, only the handshake timers have not run out yet."""
    state = StateDir(state_dir)
    if state.exists(StateDir.REVOKED):
        return "refuses"
    try:
        identity = DeviceIdentity.load(state_dir, "client")
        with identity.client(timeout=STATUS_TIMEOUT) as c:
            c.get("/v1/snapshot", {"after": snapshot.revision if snapshot else -1, "wait": 0})
    except ApiError as exc:
        if exc.status in (401, 403):
            state.write(StateDir.REVOKED, datetime.now(UTC).isoformat() + "\n")
            return "refuses"
        return f"unreachable: {exc.message}"
    except (ControllerError, OSError, ValueError) as exc:
        return f"unreachable: {exc}"
    return "accepts"


def cached_snapshot(state_dir: Path) -> ClientSnapshot | None:
    """The snapshot the tunnel was last brought up with (snapshot.json), if any."""
    path = StateDir(state_dir) / StateDir.SNAPSHOT
    if not path.exists():
        return None
    try:
        return parse_snapshot("client", json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def tunnel_state(state_dir: Path, exists: bool, latest_handshake: int) -> str:
    """revoked, down (no interface), up (a handshake within 180 s) or waiting for the gateway."""
    if StateDir(state_dir).exists(StateDir.REVOKED):
        return "revoked"
    if not exists:
        return "down"
    if latest_handshake and time.time() - latest_handshake < REJECT_AFTER:
        return "up"
    return "waiting for the gateway"
