"""WireGuard interfaces through the ``wg`` tool: kernel module or wireguard-go.

The interface is created once and then only reconciled: ``wg syncconf`` adds,
changes and removes peers without touching the others, so live tunnels never
drop when the configuration changes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zerogate.model.dataplane import WgPeer
from zerogate.netops.command import CommandError, require, run

MAX_IFNAME = 15
# One default name per role: wireguard-go's control socket /var/run/wireguard/NAME.sock
# is shared by all network namespaces of a host, so roles sharing a host need their own.
DEFAULT_INTERFACES = {"gateway": "zg-gw", "connector": "zg-cn", "client": "zg-cl"}
# WireGuard drops a session whose handshake is older than this (REJECT_AFTER_TIME):
# no handshake for this long means the tunnel carries nothing.
REJECT_AFTER = 180.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # unix time, 0 = never
    rx_bytes: int
    tx_bytes: int

    def as_report(self) -> dict[str, object]:
        return {
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "latest_handshake": self.latest_handshake,
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
        }


def check_ifname(name: str) -> str:
    if (
        not name
        or len(name) > MAX_IFNAME
        or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name)
    ):
        raise ValueError(
            f"interface name {name!r} is not valid: 1-{MAX_IFNAME} letters, digits, '-', '_' or '.'"
        )
    return name


def render_config(private_key: str, listen_port: int | None, peers: Iterable[WgPeer]) -> str:
    """The ``wg setconf``/``syncconf`` file for the interface (contains the private key)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    for p in sorted(peers, key=lambda p: p.public_key):
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}"]
        if p.allowed_ips:
            lines.append(f"AllowedIPs = {', '.join(p.allowed_ips)}")
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.keepalive:
            lines.append(f"PersistentKeepalive = {p.keepalive}")
    return "\n".join(lines) + "\n"


def parse_dump(text: str) -> tuple[int, list[PeerStatus]]:
    """Parse ``wg show IFACE dump``: the interface line, then one line per peer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty 'wg show dump' output")
    head = lines[0].split("\t")
    listen_port = int(head[2]) if len(head) > 2 and head[2].isdigit() else 0
    peers = []
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) < 8:
            raise ValueError(f"unexpected 'wg show dump' line: {line!r}")
        peers.append(
            PeerStatus(
                public_key=f[0],
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=tuple(a for a in f[3].split(",") if a and a != "(none)"),
                latest_handshake=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
            )
        )
    return listen_port, peers


# A Curve25519 key in base64: 32 bytes, so 43 characters (the last holds 4 bits) and "=".
KEY_PATTERN = r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]="
ENDPOINT_PATTERN = r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}\]):\d{1,5}"


def valid_key(text: str) -> bool:
    return re.fullmatch(KEY_PATTERN, text) is not None


def valid_endpoint(text: str) -> bool:
    """An ``address:port`` as ``wg show endpoints`` prints it (IPv6 in brackets)."""
    return re.fullmatch(ENDPOINT_PATTERN, text) is not None and 0 < int(text.rsplit(":", 1)[1]) < 65536


# wireguard-go's control sockets: one directory for the whole host, all namespaces.
SOCKET_DIR = Path("/var/run/wireguard")
_SOCKET_IN_USE = re.compile(r"UAPI listen error: .*in use")
# The box wireguard-go prints when the kernel could do the job; it is no error message.
_BANNER_LINE = re.compile(r"\s*[\u2500-\u257f].*")


class InterfaceNameInUse(CommandError):
    """A WireGuard interface of this name exists on the host, maybe in another namespace."""

    def __init__(self, name: str) -> None:
        message = (
            f"a WireGuard interface named {name} already exists on this host (possibly in another "
            f"network namespace: its control socket {SOCKET_DIR / f'{name}.sock'} is in use); "
            "pick another --interface"
        )
        super().__init__(["wireguard-go", name], 1, message)
        self.args = (message,)


def control_socket_in_use(name: str) -> bool:
    """True when a wireguard-go answers on NAME's control socket; a stale socket
    (nobody listening: its wireguard-go was killed) is removed."""
    path = SOCKET_DIR / f"{check_ifname(name)}.sock"
    if not path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            log.info("removed the stale WireGuard control socket %s", path)
            return False
        except OSError:
            return True  # there, but not ours to judge (a timeout: a busy daemon)
    return True


def _without_banner(output: str) -> str:
    return "\n".join(
        line for line in output.splitlines() if line.strip() and not _BANNER_LINE.fullmatch(line)
    )


def _implementation() -> str:
    choice = os.environ.get("ZEROGATE_WG_IMPLEMENTATION", "auto")
    if choice not in ("auto", "kernel", "userspace"):
        raise ValueError("ZEROGATE_WG_IMPLEMENTATION must be auto, kernel or userspace")
    return choice


class WgInterface:
    """One WireGuard interface in the current network namespace."""

    def __init__(self, name: str) -> None:
        self.name = check_ifname(name)
        self.implementation = ""

    def exists(self) -> bool:
        return run(["ip", "link", "show", "dev", self.name], check=False).returncode == 0

    def create(self, mtu: int = 1420) -> str:
        """Create the interface if missing; return 'kernel' or 'wireguard-go'.

        Refuses (:class:`InterfaceNameInUse`) a name whose wireguard-go control
        socket is taken: it is one per host, so another namespace may hold it.
        """
        if self.exists():
            self.implementation = self.implementation or "existing"
            return self.implementation
        if control_socket_in_use(self.name):
            raise InterfaceNameInUse(self.name)
        choice = _implementation()
        if choice in ("auto", "kernel"):
            r = run(["ip", "link", "add", "dev", self.name, "type", "wireguard"], check=False)
            if r.returncode == 0:
                self.implementation = "kernel"
            elif choice == "kernel":
                raise CommandError(
                    ["ip", "link", "add", self.name, "type", "wireguard"], r.returncode, r.stderr
                )
        if not self.implementation:
            self._start_wireguard_go()
        deadline = time.monotonic() + 5
        while not self.exists():
            if time.monotonic() > deadline:
                raise CommandError(["wireguard-go", self.name], 1, "interface did not appear within 5 s")
            time.sleep(0.05)
        run(["ip", "link", "set", "dev", self.name, "mtu", str(mtu), "up"])
        return self.implementation

    def _start_wireguard_go(self) -> None:
        go = require("wireguard-go", "wireguard-go")
        # wireguard-go daemonises itself (output to /dev/null) once the interface exists
        env = {k: v for k, v in os.environ.items() if k not in ("WG_PROCESS_FOREGROUND", "LOG_LEVEL")}
        r = run([go, self.name], timeout=30, check=False, env=env)
        if r.returncode == 0:
            self.implementation = "wireguard-go"
            return
        output = _without_banner(r.stderr + "\n" + r.stdout)
        # It created the TUN device before failing to listen: remove it, or 'exists()'
        # would take it for ours while 'wg' talks to the other namespace's socket.
        run(["ip", "link", "delete", "dev", self.name], check=False)
        if _SOCKET_IN_USE.search(output):
            raise InterfaceNameInUse(self.name)
        raise CommandError([go, self.name], r.returncode, output)

    def sync(self, private_key: str, listen_port: int | None, peers: Sequence[WgPeer]) -> None:
        """Make the peers exactly ``peers`` without disturbing unchanged ones."""
        config = render_config(private_key, listen_port, peers)
        run([require("wg", "wireguard-tools"), "syncconf", self.name, "/dev/stdin"], input=config)

    def set_endpoint(self, public_key: str, endpoint: str) -> None:
        """Point an existing peer at ``endpoint``; its keys, allowed IPs and session stay."""
        if not (valid_key(public_key) and valid_endpoint(endpoint)):
            raise ValueError("not a WireGuard public key and address:port endpoint")
        run([require("wg", "wireguard-tools"), "set", self.name, "peer", public_key, "endpoint", endpoint])

    def remove_peer(self, public_key: str) -> None:
        """Drop a peer and its sessions (a later ``sync`` adds it back fresh)."""
        if not valid_key(public_key):
            raise ValueError("not a WireGuard public key")
        run([require("wg", "wireguard-tools"), "set", self.name, "peer", public_key, "remove"])

    def status(self) -> tuple[int, list[PeerStatus]]:
        r = run([require("wg", "wireguard-tools"), "show", self.name, "dump"])
        return parse_dump(r.stdout)

    def delete(self) -> None:
        if self.exists():
            run(["ip", "link", "delete", "dev", self.name])
