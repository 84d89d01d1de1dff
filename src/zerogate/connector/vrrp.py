"""VRRP for a connector group with a virtual IP: keepalived's config, its notify
lines, and the LAN interface that carries the virtual IP. Pure functions and one
``ip -j addr`` read; the process and the gateway messages are in
:mod:`zerogate.connector.vrrp_agent`.

Why keepalived and not our own VRRP: it is the packaged, audited implementation
the LAN's operators already know (``ip addr`` shows the VIP, its log says why it
moved). Its config is a language of its own (braces, quotes, ``include``), so
every value we write into it is held to a pattern or is a typed address or an
integer: nothing from the settings or the snapshot can open a block or a string.

VRRPv3 has no authentication. The connector's nftables table admits VRRP only
from the configured peers (or, multicast, from the VIP's subnet to 224.0.0.18);
with unicast peers keepalived also checks the source (``check_unicast_src``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

from zerogate.model.vrrp import VrrpStateName
from zerogate.netops.command import run

DEFAULT_ADVERT = 0.2  # seconds: a dead master is noticed after 3.6 of them (0.72 s); see the README
DEFAULT_PRIORITY = 100
MAX_PEERS = 8

CONF_NAME = "keepalived.conf"
FIFO_NAME = "vrrp.fifo"
TRACK_NAME = "vrrp-tunnel"  # "0": the tunnel to the gateway is up; "1": down (FAULT)
STATE_NAME = "vrrp.json"  # the last state, for 'zerogate connector status'
PID_NAME = "keepalived.pid"
VRRP_PID_NAME = "keepalived-vrrp.pid"

_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_PATH = re.compile(r"/[A-Za-z0-9/_.+-]{0,3999}")
# keepalived's notify line: INSTANCE "zg_site" MASTER 100
_NOTIFY = re.compile(
    r'(INSTANCE|GROUP) "([A-Za-z0-9._-]{1,80})" (MASTER|BACKUP|FAULT|STOP|DELETED) ([0-9]{1,3})'
)


class VrrpConfigError(ValueError):
    """A value cannot go into keepalived's config, or no LAN interface fits; says which."""


@dataclass(frozen=True)
class VrrpOptions:
    """The operator's VRRP settings (``ConnectorSettings.vrrp_*``)."""

    peers: tuple[IPv4Address, ...] = ()
    priority: int = DEFAULT_PRIORITY
    preempt: bool = False
    router_id: int = 0  # 0: derived from the group name
    advert_interval: float = DEFAULT_ADVERT


@dataclass(frozen=True)
class VrrpConfig:
    """Everything one keepalived config holds, each value checked on creation."""

    group: str
    virtual_ip: IPv4Address
    prefixlen: int
    interface: str
    source: IPv4Address  # our own address on ``interface`` (unicast source)
    router_id: int
    priority: int
    preempt: bool
    advert_interval: float
    peers: tuple[IPv4Address, ...]
    state_dir: Path

    def __post_init__(self) -> None:
        if not _GROUP.fullmatch(self.group):
            raise VrrpConfigError("group: not a connector group name")
        if not _IFNAME.fullmatch(self.interface):
            raise VrrpConfigError("interface: not an interface name keepalived can be given")
        if not _PATH.fullmatch(str(self.state_dir)):
            raise VrrpConfigError(
                "state_dir: keepalived's config needs an absolute path of letters, digits and / _ . + -"
            )
        for name, value, low, high in (
            ("router_id", self.router_id, 1, 255),
            ("priority", self.priority, 1, 254),
            ("prefixlen", self.prefixlen, 1, 32),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise VrrpConfigError(f"{name}: must be an integer from {low} to {high}")
        check_advert(self.advert_interval)
        addresses = (self.virtual_ip, self.source, *self.peers)
        if not all(isinstance(a, IPv4Address) for a in addresses):
            raise VrrpConfigError("virtual_ip, source and peers must be IPv4 addresses")
        if len(self.peers) > MAX_PEERS:
            raise VrrpConfigError(f"peers: at most {MAX_PEERS}")
        if self.virtual_ip == self.source or self.virtual_ip in self.peers:
            raise VrrpConfigError("the virtual IP must not be a connector's own LAN address")

    @property
    def instance(self) -> str:
        return f"zg_{self.group}"

    def path(self, name: str) -> Path:
        return self.state_dir / name


def check_advert(seconds: float) -> float:
    """VRRPv3 counts the advertisement interval in centiseconds, 1 to 4095."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise VrrpConfigError("advert_interval: must be a number of seconds")
    centis = round(seconds * 100)
    if not 1 <= centis <= 4095 or abs(centis - seconds * 100) > 1e-6:
        raise VrrpConfigError("advert_interval: 0.01 to 40.95 seconds, in steps of 0.01")
    return centis / 100


def router_id_for(group: str) -> int:
    """A virtual router id (1-255) derived stably from the group name, so two
    connectors of one group agree without configuration."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") % 255 + 1


def render_keepalived(cfg: VrrpConfig) -> str:
    """keepalived.conf for ``cfg``: both connectors start BACKUP (no preemption
    unless asked), and a master whose tunnel is down goes to FAULT (track file)."""
    lines = [
        f"# Written by 'zerogate connector run' for connector group {cfg.group}; rewritten on every change.",
        "global_defs {",
        "    vrrp_version 3",
        "    max_auto_priority",  # realtime when it falls behind: no flapping on a busy host
        # after two masters met (a LAN split healed), the loser's last advert makes the
        # winner announce the VIP's MAC again, so the LAN does not keep the loser's
        "    vrrp_higher_prio_send_advert",
        "    vrrp_garp_lower_prio_repeat 5",
        f'    notify_fifo "{cfg.path(FIFO_NAME)}"',
        "}",
        "",
        "track_file zg_tunnel {",
        f'    file "{cfg.path(TRACK_NAME)}"',
        "    weight 0",
        "    init_file 1",
        "}",
        "",
        f"vrrp_instance {cfg.instance} {{",
        "    state BACKUP",
        f"    interface {cfg.interface}",
        f"    virtual_router_id {cfg.router_id}",
        f"    priority {cfg.priority}",
        f"    advert_int {check_advert(cfg.advert_interval):.2f}",
        *([] if cfg.preempt else ["    nopreempt"]),
        "    virtual_ipaddress {",
        f"        {cfg.virtual_ip}/{cfg.prefixlen} dev {cfg.interface}",
        "    }",
        "    track_file {",
        "        zg_tunnel",
        "    }",
    ]
    if cfg.peers:
        lines += [
            f"    unicast_src_ip {cfg.source}",
            "    check_unicast_src",
            "    unicast_peer {",
            *(f"        {p}" for p in cfg.peers),
            "    }",
        ]
    lines += ["}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Notify:
    """One line from keepalived's notify FIFO."""

    instance: str
    state: str  # MASTER BACKUP FAULT STOP DELETED
    priority: int

    @property
    def vrrp_state(self) -> VrrpStateName:
        """What the gateway is told: STOP and DELETED withdraw a claim like BACKUP."""
        return {"MASTER": "master", "FAULT": "fault"}.get(self.state, "backup")  # type: ignore[return-value]


def parse_notify(line: bytes) -> Notify | None:
    """An ``INSTANCE "name" STATE PRIORITY`` line, or None for anything else
    (group lines, garbage: the FIFO is ours, but a parser trusts nothing)."""
    if len(line) > 200:
        return None
    try:
        text = line.decode("ascii").rstrip("\n")
    except UnicodeDecodeError:
        return None
    m = _NOTIFY.fullmatch(text)
    if m is None or m[1] != "INSTANCE":
        return None
    return Notify(m[2], m[3], int(m[4]))


def lan_interface_for(vip: IPv4Address, addr_json: str) -> tuple[str, IPv4Interface]:
    """The interface, and our address on it, whose IPv4 subnet holds ``vip``
    (from ``ip -j addr``); the VIP itself (when keepalived holds it) is skipped."""
    try:
        links = json.loads(addr_json)
    except json.JSONDecodeError:
        raise VrrpConfigError("cannot read the output of 'ip -j addr'") from None
    found: list[tuple[str, IPv4Interface]] = []
    for link in links if isinstance(links, list) else []:
        name = link.get("ifname") if isinstance(link, dict) else None
        if not isinstance(name, str) or not _IFNAME.fullmatch(name):
            continue
        for a in link.get("addr_info") or []:
            if not isinstance(a, dict) or a.get("family") != "inet":
                continue
            try:
                iface = IPv4Interface(f"{a.get('local')}/{a.get('prefixlen')}")
            except ValueError:
                continue
            if iface.ip != vip and iface.network.prefixlen < 32 and vip in iface.network:
                found.append((name, iface))
    if not found:
        raise VrrpConfigError(
            f"no interface of this host has an address in a subnet holding the virtual IP {vip}: "
            "give the LAN interface an address in that subnet"
        )
    return min(found, key=lambda f: (-f[1].network.prefixlen, f[0]))  # the narrowest subnet


def find_lan_interface(vip: IPv4Address) -> tuple[str, IPv4Interface]:
    return lan_interface_for(vip, run(["ip", "-j", "-4", "addr", "show"], timeout=10).stdout)


def build_config(group: str, vip: IPv4Address, options: VrrpOptions, state_dir: Path) -> VrrpConfig:
    """The config for this host: interface found from its addresses, router id derived."""
    interface, address = find_lan_interface(vip)
    return VrrpConfig(
        group=group,
        virtual_ip=vip,
        prefixlen=address.network.prefixlen,
        interface=interface,
        source=address.ip,
        router_id=options.router_id or router_id_for(group),
        priority=options.priority,
        preempt=options.preempt,
        advert_interval=options.advert_interval,
        peers=tuple(options.peers),
        state_dir=state_dir,
    )
