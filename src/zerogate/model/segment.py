"""Segment learning and review as values: what a host listens on, what conntrack
saw, the learned flows, proposed rules, asset modes and simulation results (pure).

The segment server observes a Linux asset over SSH (``conntrack``, ``ss``;
parsers in :mod:`zerogate.netops.conntrack` and :mod:`zerogate.netops.ss`),
turns observations into :class:`Flow` records and proposes
:class:`ProposedRule` objects (:mod:`zerogate.policy.segment`). Everything
here is a frozen dataclass validated at construction, so a value that exists
is a valid one: ports are 1-65535, addresses are :mod:`ipaddress` objects of
one family per connection, times are timezone-aware, process and group names
are short printable text without control or invisible characters.

Errors: :class:`SegmentValueError` (a ``ValueError``) names the field and the
value that was refused.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from zerogate.model.text import INVISIBLE_CATEGORIES

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Protocol = Literal["tcp", "udp"]
Direction = Literal["inbound", "outbound"]
FlowKey = tuple[str, str, int, int, int, str]
PROTOCOLS: frozenset[str] = frozenset({"tcp", "udp"})
PROCESS_NAME_MAX = 64  # Linux comm is 15 bytes; room for other platforms' image names
GROUP_NAME_MAX = 128


class SegmentValueError(ValueError):
    """A segment value that cannot be built: the message names the field and the value."""


# --------------------------------------------------------------------------- field checks


def _protocol(value: object) -> None:
    if value not in PROTOCOLS:
        raise SegmentValueError(f"protocol must be tcp or udp, not {value!r}")


def _port(value: object, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise SegmentValueError(f"{field} must be a port number 1-65535, not {value!r}")


def _address(value: object, field: str) -> None:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise SegmentValueError(f"{field} must be an IPv4Address or IPv6Address, not {value!r}")


def _aware(value: object, field: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise SegmentValueError(f"{field} must be a timezone-aware datetime, not {value!r}")


def check_name(value: object, field: str, limit: int) -> None:
    """Printable text of 1..``limit`` characters with no control or invisible character."""
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise SegmentValueError(f"{field} must be text of 1-{limit} characters, not {value!r}")
    if not value.isprintable() or any(unicodedata.category(c) in INVISIBLE_CATEGORIES for c in value):
        raise SegmentValueError(f"{field} may not hold control or invisible characters: {value!r}")


def host_network(address: Address) -> Network:
    """The /32 or /128 holding exactly ``address``."""
    return ipaddress.ip_network(address)


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket from ``ss``. ``address`` None means every address of
    both families (ss prints ``*``: an IPv6 socket that also takes IPv4);
    ``0.0.0.0`` and ``::`` mean every address of their own family only.
    ``process`` is None when ``ss`` ran without root (no ``-p`` detail)."""

    protocol: Protocol
    address: Address | None
    port: int
    process: str | None = None

    def __post_init__(self) -> None:
        _protocol(self.protocol)
        if self.address is not None:
            _address(self.address, "listener address")
        _port(self.port, "listener port")
        if self.process is not None:
            check_name(self.process, "process name", PROCESS_NAME_MAX)

    def accepts(self, protocol: str, address: Address, port: int) -> bool:
        """Whether a packet to ``address``:``port`` over ``protocol`` reaches this socket."""
        if protocol != self.protocol or port != self.port:
            return False
        mine = self.address
        if mine is None:
            return True
        if isinstance(mine, ipaddress.IPv6Address) and mine.ipv4_mapped is not None:
            mine = mine.ipv4_mapped
        if mine.version != address.version:
            return False
        return mine.is_unspecified or mine == address


@dataclass(frozen=True, slots=True)
class Connection:
    """One conntrack entry: the original direction's tuple, the TCP state
    (None for UDP) and whether the other side ever answered."""

    protocol: Protocol
    src: Address
    dst: Address
    sport: int
    dport: int
    state: str | None = None
    replied: bool = False

    def __post_init__(self) -> None:
        _protocol(self.protocol)
        _address(self.src, "source address")
        _address(self.dst, "destination address")
        if self.src.version != self.dst.version:
            raise SegmentValueError(f"source {self.src} and destination {self.dst} are of different families")
        _port(self.sport, "source port")
        _port(self.dport, "destination port")
        if self.state is not None and not (self.state.isascii() and self.state.replace("_", "").isalpha()):
            raise SegmentValueError(f"state must be a word like ESTABLISHED, not {self.state!r}")


@dataclass(frozen=True, slots=True)
class Flow:
    """The learning record of one flow: inbound, ``peer`` reached ``port`` on the
    asset (served by ``process``); outbound, the asset reached ``peer``:``port``
    (process unknown). ``count`` is how many times it was observed."""

    protocol: Protocol
    port: int
    peer: Address
    process: str | None
    first_seen: datetime
    last_seen: datetime
    count: int = 1
    direction: Direction = "inbound"

    def __post_init__(self) -> None:
        _protocol(self.protocol)
        _port(self.port, "flow port")
        _address(self.peer, "peer address")
        if self.process is not None:
            check_name(self.process, "process name", PROCESS_NAME_MAX)
        _aware(self.first_seen, "first_seen")
        _aware(self.last_seen, "last_seen")
        if self.last_seen < self.first_seen:
            raise SegmentValueError(f"last_seen {self.last_seen} is before first_seen {self.first_seen}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise SegmentValueError(f"count must be a positive integer, not {self.count!r}")
        if self.direction not in ("inbound", "outbound"):
            raise SegmentValueError(f"direction must be inbound or outbound, not {self.direction!r}")

    @property
    def key(self) -> FlowKey:
        """What makes two observations the same flow; sorts deterministically."""
        return (
            self.direction,
            self.protocol,
            self.port,
            self.peer.version,
            int(self.peer),
            self.process or "",
        )


# --------------------------------------------------------------------------- review


@dataclass(frozen=True, slots=True)
class Group:
    """A named set of networks known to the controller (a site, a directory group)."""

    name: str
    networks: tuple[Network, ...]

    def __post_init__(self) -> None:
        check_name(self.name, "group name", GROUP_NAME_MAX)
        if not self.networks:
            raise SegmentValueError(f"group {self.name!r} has no networks")
        for net in self.networks:
            if not isinstance(net, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise SegmentValueError(f"group {self.name!r}: {net!r} is not a network")

    def contains(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    @property
    def size(self) -> int:
        """Addresses covered (overlaps counted twice); smaller groups are the tighter fit."""
        return sum(n.num_addresses for n in self.networks)


Source = Group | Network


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a rule is proposed: how many flow records and observations, from how
    many distinct peers, over which period."""

    flows: int
    connections: int
    peers: int
    first_seen: datetime
    last_seen: datetime

    def __post_init__(self) -> None:
        for name in ("flows", "connections", "peers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SegmentValueError(f"evidence {name} must be a positive integer, not {value!r}")
        _aware(self.first_seen, "evidence first_seen")
        _aware(self.last_seen, "evidence last_seen")
        if self.last_seen < self.first_seen:
            raise SegmentValueError("evidence last_seen is before first_seen")


@dataclass(frozen=True, slots=True)
class ProposedRule:
    """Allow ``protocol`` to ports ``first_port``..``last_port`` from ``sources``
    (groups and networks; a single address is a /32 or /128)."""

    protocol: Protocol
    first_port: int
    last_port: int
    sources: tuple[Source, ...]
    evidence: Evidence | None = None  # None for a rule the admin wrote

    def __post_init__(self) -> None:
        _protocol(self.protocol)
        _port(self.first_port, "first port")
        _port(self.last_port, "last port")
        if self.last_port < self.first_port:
            raise SegmentValueError(f"port range {self.first_port}-{self.last_port} is reversed")
        if not self.sources:
            raise SegmentValueError("a rule needs at least one source")
        for src in self.sources:
            if not isinstance(src, Group | ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise SegmentValueError(f"source {src!r} is neither a group nor a network")

    @property
    def ports(self) -> str:
        return (
            str(self.first_port)
            if self.first_port == self.last_port
            else f"{self.first_port}-{self.last_port}"
        )

    def covers(self, protocol: str, port: int) -> bool:
        return protocol == self.protocol and self.first_port <= port <= self.last_port

    def admits(self, address: Address) -> bool:
        for src in self.sources:
            if isinstance(src, Group):
                if src.contains(address):
                    return True
            elif src.version == address.version and address in src:
                return True
        return False

    def allows(self, flow: Flow) -> bool:
        """Whether this rule lets the inbound ``flow`` in."""
        return (
            flow.direction == "inbound" and self.covers(flow.protocol, flow.port) and self.admits(flow.peer)
        )


# --------------------------------------------------------------------------- modes


class AssetMode(StrEnum):
    MONITORED = "monitored"  # inventoried, nothing observed or enforced
    LEARNING = "learning"  # observing flows, nothing enforced
    LEARNING_WITH_BLOCKS = "learning_with_blocks"  # observing; only explicit denies enforced
    PROTECTED = "protected"  # only approved traffic (and management) allowed


TRANSITIONS: Mapping[AssetMode, frozenset[AssetMode]] = {
    AssetMode.MONITORED: frozenset({AssetMode.LEARNING}),
    AssetMode.LEARNING: frozenset({AssetMode.MONITORED, AssetMode.LEARNING_WITH_BLOCKS, AssetMode.PROTECTED}),
    AssetMode.LEARNING_WITH_BLOCKS: frozenset({AssetMode.MONITORED, AssetMode.LEARNING, AssetMode.PROTECTED}),
    # unprotect is one action away from protected: back to monitored, or relearn
    AssetMode.PROTECTED: frozenset({AssetMode.MONITORED, AssetMode.LEARNING}),
}


def check_transition(current: AssetMode, target: AssetMode) -> None:
    """Raise :class:`SegmentValueError` unless an asset may go from ``current`` to ``target``."""
    allowed = TRANSITIONS[current]
    if target not in allowed:
        choices = ", ".join(sorted(allowed))
        raise SegmentValueError(f"an asset in mode {current} cannot go to {target}; it can go to: {choices}")


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True, slots=True)
class SourceVerdict:
    """One source address in a simulation: the flows the rules let in and those
    they would block. The source is allowed when nothing of it is blocked."""

    peer: Address
    allowed_flows: tuple[Flow, ...]
    blocked_flows: tuple[Flow, ...]

    @property
    def allowed(self) -> bool:
        return not self.blocked_flows


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """Per source (sorted by address), what the candidate rules would do to the learned flows."""

    sources: tuple[SourceVerdict, ...]

    @property
    def blocked(self) -> tuple[SourceVerdict, ...]:
        return tuple(s for s in self.sources if not s.allowed)

    @property
    def blocks_nothing(self) -> bool:
        return not self.blocked
