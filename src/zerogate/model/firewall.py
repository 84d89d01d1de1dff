"""Host firewall rules as data: what a zerogate role needs, before any output format (pure).

A :class:`Ruleset` is a list of abstract *allow* rules per hook (input, forward,
output; whatever a filtered hook does not allow is dropped), built from a validated
:class:`FirewallSpec` by :func:`zerogate.deploy.firewall.roles.role_ruleset` and
rendered by one module per output format in :mod:`zerogate.deploy.firewall`.
Everything here is frozen; nothing does I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Proto = Literal["tcp", "udp", "any", "ping"]  # ping: ICMP / ICMPv6 echo request
ANYWHERE: tuple[Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


class Role(StrEnum):
    GATEWAY = "gateway"
    CONNECTOR = "connector"
    CLIENT = "client-hardening"
    CLOUD = "cloud-connector"


class Hook(StrEnum):
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, kw_only=True)
class FirewallSpec:
    """Validated options of one render; build it with ``zerogate.deploy.firewall.parse_spec``."""

    role: Role
    port_range: PortRange
    controller_port: int
    tunnel: str
    mgmt_cidrs: tuple[Network, ...]
    local_ranges: tuple[Network, ...]
    subnets: tuple[Network, ...]
    mgmt_interface: str
    service_interface: str
    allow_ssh: bool = False


@dataclass(frozen=True)
class Rule:
    """One allowance. Empty ``saddr``/``daddr`` means any address; ``None`` ports mean any port."""

    hook: Hook
    why: str
    proto: Proto = "any"
    dport: PortRange | None = None
    sport: PortRange | None = None
    saddr: tuple[Network, ...] = ()
    daddr: tuple[Network, ...] = ()
    iif: str | None = None
    oif: str | None = None
    host_only: bool = False  # traffic a cloud security group does not filter (DHCP, metadata service)


@dataclass(frozen=True)
class Ruleset:
    """A role's allowances; every hook in ``filtered`` drops what they do not allow."""

    spec: FirewallSpec
    rules: tuple[Rule, ...]
    filtered: tuple[Hook, ...]  # hooks whose default is drop; others are left alone
    rpf_interfaces: tuple[str, ...] = ()  # strict reverse-path check (anti-spoofing)
    notes: tuple[str, ...] = ()

    def of(self, hook: Hook) -> list[Rule]:
        return [r for r in self.rules if r.hook is hook]
