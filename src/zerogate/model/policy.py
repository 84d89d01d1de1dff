"""Policy objects: the typed, validated inputs of the policy compiler.

Everything here is an immutable value. Constructors validate their arguments
and raise :class:`ValueError` with a message that says what is wrong, so a bad
object never reaches the compiler.

Semantics worth knowing:

* Policies are allow-only; whatever no enabled policy allows is denied.
* ``Destination.ports == ()`` means every port. Ports exist only for TCP and
  UDP; an ICMP or "any" destination always covers the whole protocol.
* References between objects (a policy naming an application that does not
  exist, a device of an unknown user) are not errors: they grant nothing. A
  controller may compile while an object is being deleted.
* :class:`TimeWindow` is wall-clock time in its zone. A window belongs to the
  day it *starts* on; ``end < start`` runs past midnight into the next day and
  ``end == start`` means 24 hours. Local times that do not exist (spring
  forward) or happen twice (fall back) are resolved the way PEP 495 does with
  ``fold=0``: a missing time is shifted forward by the gap, a repeated time
  means its first occurrence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "PROTOCOLS",
    "AppSpec",
    "ClientDevice",
    "Destination",
    "PolicyInputs",
    "PolicySpec",
    "PortRange",
    "Protocol",
    "TimeWindow",
    "UserSpec",
]

Protocol = Literal["tcp", "udp", "icmp", "any"]
PROTOCOLS: tuple[Protocol, ...] = get_args(Protocol)

_PORTED_PROTOCOLS = frozenset({"tcp", "udp"})
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _check_id(kind: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{kind} id must be a non-negative integer, got {value!r}")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")


def _check_id_set(kind: str, owner: str, values: frozenset[int]) -> None:
    if not isinstance(values, frozenset):
        raise ValueError(f"{owner}: {kind} ids must be a frozenset, got {type(values).__name__}")
    for value in values:
        _check_id(kind, value)


@dataclass(frozen=True, order=True, slots=True)
class PortRange:
    """An inclusive range of TCP/UDP ports, 1..65535."""

    first: int
    last: int

    def __post_init__(self) -> None:
        for value in (self.first, self.last):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise ValueError(f"port must be an integer in 1..65535, got {value!r}")
        if self.first > self.last:
            raise ValueError(
                f"port range {self.first}-{self.last} is reversed; write {self.last}-{self.first}"
            )

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """Parse ``"80"`` or ``"8000-8080"``."""
        parts = [part.strip() for part in text.strip().split("-")]
        if len(parts) not in (1, 2) or not all(p.isascii() and p.isdigit() for p in parts):
            raise ValueError(f"invalid port range {text!r}: expected '80' or '8000-8080'")
        first = int(parts[0])
        last = int(parts[-1])
        return cls(first, last)


@dataclass(frozen=True, slots=True)
class Destination:
    """A network prefix plus protocol and ports; ``ports == ()`` means all ports."""

    prefix: IPv4Network | IPv6Network
    protocol: Protocol
    ports: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, IPv4Network | IPv6Network):
            raise ValueError(f"destination prefix must be an IPv4Network or IPv6Network, got {self.prefix!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if not isinstance(self.ports, tuple) or not all(isinstance(p, PortRange) for p in self.ports):
            raise ValueError(f"destination ports must be a tuple of PortRange, got {self.ports!r}")
        if self.ports and self.protocol not in _PORTED_PROTOCOLS:
            raise ValueError(
                f"{self.protocol} destination {self.prefix} cannot have ports; "
                "ports apply only to tcp and udp"
            )

    def __str__(self) -> str:
        ports = ",".join(str(p) for p in self.ports) if self.ports else "all"
        return f"{self.protocol} {self.prefix} ports {ports}"


@dataclass(frozen=True, slots=True)
class AppSpec:
    """An application: destinations reachable through one connector group."""

    id: int
    name: str
    connector_group_id: int
    destinations: tuple[Destination, ...]

    def __post_init__(self) -> None:
        _check_id("application", self.id)
        _check_name("application", self.name)
        _check_id("connector group", self.connector_group_id)
        if not isinstance(self.destinations, tuple) or not all(
            isinstance(d, Destination) for d in self.destinations
        ):
            raise ValueError(f"application {self.name!r}: destinations must be a tuple")
        if not self.destinations:
            raise ValueError(f"application {self.name!r} needs at least one destination")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Recurring weekly window: on ``days`` (0=Monday) from ``start`` to ``end``."""

    days: frozenset[int]
    start: dt.time
    end: dt.time
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.days, frozenset) or not self.days:
            raise ValueError("time window needs a non-empty frozenset of days (0=Monday..6)")
        for day in self.days:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise ValueError(f"time window day must be 0 (Monday) .. 6 (Sunday), got {day!r}")
        for label, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, dt.time):
                raise ValueError(f"time window {label} must be a datetime.time, got {value!r}")
            if value.tzinfo is not None:
                raise ValueError(f"time window {label} must be a naive time; set the zone with tz=")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}: use an IANA name") from exc

    def __str__(self) -> str:
        days = ",".join(_DAY_NAMES[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.tz}"

    def _intervals(self, around: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
        """Open intervals [start, end) in UTC starting from 2 days before to 9 after."""
        zone = ZoneInfo(self.tz)
        today = around.astimezone(zone).date()
        crosses = self.end <= self.start
        intervals = []
        for offset in range(-2, 10):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            end_day = day + dt.timedelta(days=1) if crosses else day
            begin = dt.datetime.combine(day, self.start, tzinfo=zone).astimezone(dt.UTC)
            end = dt.datetime.combine(end_day, self.end, tzinfo=zone).astimezone(dt.UTC)
            if begin < end:  # a DST gap can swallow a short window entirely
                intervals.append((begin, end))
        return intervals

    @staticmethod
    def _aware(at: dt.datetime) -> dt.datetime:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"time {at.isoformat()} has no time zone; pass an aware datetime")
        return at.astimezone(dt.UTC)

    def contains(self, at: dt.datetime) -> bool:
        """Whether the window is open at the (timezone-aware) instant ``at``."""
        when = self._aware(at)
        return any(begin <= when < end for begin, end in self._intervals(when))

    def next_boundary(self, after: dt.datetime) -> dt.datetime | None:
        """The first instant strictly after ``after`` at which :meth:`contains` changes.

        Returns an aware UTC datetime, or ``None`` when the window never changes
        (every day, ``start == end``: always open).
        """
        when = self._aware(after)
        intervals = self._intervals(when)
        # The pattern repeats weekly, so a change, if any, comes within 8 days;
        # later edges sit near the end of the computed intervals and are unsafe.
        horizon = when + dt.timedelta(days=8)
        edges = sorted({edge for pair in intervals for edge in pair if when < edge <= horizon})
        tick = dt.timedelta(microseconds=1)
        for edge in edges:
            before = any(b <= edge - tick < e for b, e in intervals)
            at_edge = any(b <= edge < e for b, e in intervals)
            if before != at_edge:
                return edge
        return None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """Allow members of ``group_ids`` to reach applications ``app_ids``."""

    id: int
    name: str
    group_ids: frozenset[int]
    app_ids: frozenset[int]
    require_mfa: bool = False
    window: TimeWindow | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_id("policy", self.id)
        _check_name("policy", self.name)
        _check_id_set("group", f"policy {self.name!r}", self.group_ids)
        _check_id_set("application", f"policy {self.name!r}", self.app_ids)
        if self.window is not None and not isinstance(self.window, TimeWindow):
            raise ValueError(f"policy {self.name!r}: window must be a TimeWindow or None")


@dataclass(frozen=True, slots=True)
class UserSpec:
    id: int
    name: str
    group_ids: frozenset[int]
    enabled: bool = True

    def __post_init__(self) -> None:
        _check_id("user", self.id)
        _check_name("user", self.name)
        _check_id_set("group", f"user {self.name!r}", self.group_ids)


@dataclass(frozen=True, slots=True)
class ClientDevice:
    """An enrolled client; ``mfa`` says its session passed a second factor."""

    device_id: int
    user_id: int
    address: IPv4Address
    mfa: bool = True

    def __post_init__(self) -> None:
        _check_id("device", self.device_id)
        _check_id("user", self.user_id)
        if not isinstance(self.address, IPv4Address):
            raise ValueError(f"device {self.device_id}: address must be an IPv4Address, got {self.address!r}")


def _unique(kind: str, ids: Iterable[object]) -> None:
    seen: set[object] = set()
    for value in ids:
        if value in seen:
            raise ValueError(f"duplicate {kind} {value}")
        seen.add(value)


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """Everything the compiler reads, as one immutable snapshot."""

    users: tuple[UserSpec, ...]
    apps: tuple[AppSpec, ...]
    policies: tuple[PolicySpec, ...]
    devices: tuple[ClientDevice, ...]

    def __post_init__(self) -> None:
        for kind, items, cls in (
            ("users", self.users, UserSpec),
            ("apps", self.apps, AppSpec),
            ("policies", self.policies, PolicySpec),
            ("devices", self.devices, ClientDevice),
        ):
            if not isinstance(items, tuple) or not all(isinstance(i, cls) for i in items):
                raise ValueError(f"{kind} must be a tuple of {cls.__name__}")
        _unique("user id", (u.id for u in self.users))
        _unique("application id", (a.id for a in self.apps))
        _unique("policy id", (p.id for p in self.policies))
        _unique("device id", (d.device_id for d in self.devices))
        _unique("device address", (d.address for d in self.devices))
