"""Policy compiler: users, devices, applications and policies -> allow rules.

The gateway enforces the result; the compiler is pure and deterministic.

Representation. Expanding every (device, destination) pair does not scale
(10,000 devices x hundreds of destinations is millions of rules), and grouping
devices with identical rule sets barely helps when users sit in a few random
groups: almost every device ends up with a set of its own. So the output is
one :class:`PolicyGrant` per policy that applies now: the client addresses it
grants (devices of enabled users in its groups, only MFA devices when it
requires MFA) and that policy's own rules. A gateway renders one named set of
sources per policy and one rule per (policy, rule) matching that set, so its
ruleset grows with the sum of the policies' sizes, not with their product.
Grants are keyed by policy id, so two compiles diff policy by policy.

Decisions the gateway renderer must know:

* Ports ``0..65535`` (:data:`ALL_PORTS`) mean "no port match" for every
  protocol: ICMP, "any", and TCP/UDP destinations without ports.
* A grant's port ranges are merged (overlap or adjacency) per destination and
  protocol; :meth:`CompiledPolicy.expand` merges them across policies as
  well. Different prefixes are never merged, even when one contains the other;
  "any" and "tcp" rules for one prefix stay separate.
* A policy appears only when it is enabled, its window contains ``now``, it
  has at least one rule (after the connector group filter) and at least one
  source. :attr:`CompiledPolicy.next_change` says when windows make a
  recompile necessary.

Errors: :class:`ValueError` for malformed arguments (naive datetimes, a port
on an ICMP query, ...). Dangling references in the inputs grant nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from itertools import chain
from types import MappingProxyType
from typing import Literal

from zerogate.model.policy import AppSpec, Destination, PolicyInputs, PolicySpec, Protocol

__all__ = [
    "ALL_PORTS",
    "AllowTuple",
    "CompiledPolicy",
    "Decision",
    "PolicyGrant",
    "Rule",
    "compile_policy",
    "explain",
    "merge_port_ranges",
]

ALL_PORTS = (0, 65535)

Network = IPv4Network | IPv6Network
_DestKey = tuple[int, int, int]
_Span = tuple[Network, Protocol, int, int]


def _dest_key(net: Network) -> _DestKey:
    # IPv4Network and IPv6Network refuse to compare with each other.
    return (net.version, int(net.network_address), net.prefixlen)


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class Rule:
    """Allow ``protocol`` to ``destination`` ports first..last; from policy ``policy_id``."""

    destination: Network
    protocol: Protocol
    first_port: int
    last_port: int
    policy_id: int

    def sort_key(self) -> tuple[_DestKey, str, int, int, int]:
        return (
            _dest_key(self.destination),
            self.protocol,
            self.first_port,
            self.last_port,
            self.policy_id,
        )

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return self.sort_key() < other.sort_key()


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class AllowTuple:
    """One fully expanded permission: ``source`` may reach the destination."""

    source: IPv4Address
    destination: Network
    protocol: Protocol
    first_port: int
    last_port: int

    def sort_key(self) -> tuple[int, _DestKey, str, int, int]:
        return (
            int(self.source),
            _dest_key(self.destination),
            self.protocol,
            self.first_port,
            self.last_port,
        )

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AllowTuple):
            return NotImplemented
        return self.sort_key() < other.sort_key()


def merge_port_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted union of inclusive ranges; overlapping and adjacent ranges join."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


@dataclass(frozen=True, slots=True)
class PolicyGrant:
    """One policy as a gateway enforces it: ``sources`` may use ``rules``.

    ``sources`` are sorted client addresses; ``rules`` are sorted, with port
    ranges merged per destination and protocol, and all carry ``policy_id``.
    """

    policy_id: int
    name: str
    sources: tuple[IPv4Address, ...]
    rules: tuple[Rule, ...]


class _SpanMerger:
    """Unions the rules of several policies, dropping policy ids.

    Every distinct rule gets a rank in sort order once, so the union for a
    set of policies sorts plain ints and merges in one pass.
    """

    def __init__(self, grants: Mapping[int, PolicyGrant]) -> None:
        spans = {
            (r.destination, r.protocol, r.first_port, r.last_port)
            for grant in grants.values()
            for r in grant.rules
        }
        self._spans: list[_Span] = sorted(spans, key=lambda s: (_dest_key(s[0]), s[1], s[2], s[3]))
        rank = {span: i for i, span in enumerate(self._spans)}
        self._ranks = {
            pid: [rank[(r.destination, r.protocol, r.first_port, r.last_port)] for r in grant.rules]
            for pid, grant in grants.items()
        }

    def merged(self, policy_ids: tuple[int, ...]) -> list[_Span]:
        """The union of these policies' rules, sorted, port ranges merged."""
        if len(policy_ids) == 1:  # one policy's rules are merged already
            return [self._spans[i] for i in self._ranks[policy_ids[0]]]
        merged: list[_Span] = []
        for i in sorted(set(chain.from_iterable(self._ranks[p] for p in policy_ids))):
            net, proto, first, last = span = self._spans[i]
            if merged:
                prev_net, prev_proto, prev_first, prev_last = merged[-1]
                if prev_net == net and prev_proto == proto and first <= prev_last + 1:
                    if last > prev_last:
                        merged[-1] = (net, proto, prev_first, last)
                    continue
            merged.append(span)
        return merged


def _contains(sources: tuple[IPv4Address, ...], address: IPv4Address) -> bool:
    i = bisect_left(sources, address)
    return i < len(sources) and sources[i] == address


@dataclass(frozen=True)
class CompiledPolicy:
    """What one gateway enforces: policy id -> grant, valid until ``next_change``."""

    policies: Mapping[int, PolicyGrant]
    next_change: dt.datetime | None

    def rules_for_source(self, address: IPv4Address) -> tuple[Rule, ...]:
        """Every rule that lets ``address`` through, sorted, with its policy id.

        Rules of different policies are not merged, so a client can name the
        policies (and through them the applications) that grant each route.
        """
        found = [
            rule
            for grant in self.policies.values()
            if _contains(grant.sources, address)
            for rule in grant.rules
        ]
        found.sort(key=Rule.sort_key)
        return tuple(found)

    def _policies_by_source(self) -> dict[int, tuple[int, ...]]:
        """Source address (as int) -> ids of the policies granting it, ascending."""
        by_source: defaultdict[int, list[int]] = defaultdict(list)
        for pid in sorted(self.policies):
            for source in self.policies[pid].sources:
                by_source[int(source)].append(pid)
        return {source: tuple(pids) for source, pids in by_source.items()}

    def expand(self) -> Iterator[AllowTuple]:
        """Every allowed (source, destination, protocol, ports), in sorted order.

        Rules of all policies granting a source are unioned, so a tuple never
        repeats and port ranges are merged across policies. Streams source by
        source; only one source's merged rules are held at a time.
        """
        merger = _SpanMerger(self.policies)
        by_source = self._policies_by_source()
        previous: tuple[int, ...] = ()
        spans: list[_Span] = []
        for source in sorted(by_source):
            pids = by_source[source]
            if pids != previous:
                previous, spans = pids, merger.merged(pids)
            address = IPv4Address(source)
            for net, proto, first, last in spans:
                yield AllowTuple(address, net, proto, first, last)

    def count_tuples(self) -> int:
        """``sum(1 for _ in self.expand())`` without building the tuples."""
        merger = _SpanMerger(self.policies)
        sets = Counter(self._policies_by_source().values())
        return sum(len(merger.merged(pids)) * count for pids, count in sets.items())


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now={now.isoformat()} has no time zone; pass an aware datetime")


def _policy_rules(policy: PolicySpec, apps: Mapping[int, AppSpec]) -> tuple[Rule, ...]:
    spans: defaultdict[tuple[Network, Protocol], list[tuple[int, int]]] = defaultdict(list)
    for app_id in policy.app_ids:
        app = apps.get(app_id)
        if app is None:
            continue
        for dest in app.destinations:
            ranges = spans[(dest.prefix, dest.protocol)]
            if dest.ports:
                ranges.extend((r.first, r.last) for r in dest.ports)
            else:
                ranges.append(ALL_PORTS)
    rules = [
        Rule(net, proto, first, last, policy.id)
        for (net, proto), ranges in spans.items()
        for first, last in merge_port_ranges(ranges)
    ]
    rules.sort(key=Rule.sort_key)
    return tuple(rules)


def compile_policy(
    inputs: PolicyInputs,
    *,
    now: dt.datetime,
    connector_group_ids: frozenset[int] | None = None,
) -> CompiledPolicy:
    """Compile the grants one gateway enforces at ``now``.

    ``connector_group_ids`` are the connector groups the gateway serves
    (``None``: all). Only enabled users and policies count, only policies
    whose window contains ``now``, and MFA policies only for MFA devices.
    """
    _require_aware(now)
    apps = {
        a.id: a
        for a in inputs.apps
        if connector_group_ids is None or a.connector_group_id in connector_group_ids
    }
    # Group -> device addresses as ints (cheap to union and sort).
    users = {u.id: u for u in inputs.users if u.enabled}
    addresses: dict[int, IPv4Address] = {}
    any_device: defaultdict[int, list[int]] = defaultdict(list)
    mfa_device: defaultdict[int, list[int]] = defaultdict(list)
    for device in inputs.devices:
        user = users.get(device.user_id)
        if user is None:
            continue
        number = int(device.address)
        addresses[number] = device.address
        for group_id in user.group_ids:
            any_device[group_id].append(number)
            if device.mfa:
                mfa_device[group_id].append(number)

    grants: dict[int, PolicyGrant] = {}
    next_change: dt.datetime | None = None
    for policy in sorted(inputs.policies, key=lambda p: p.id):
        if not policy.enabled:
            continue
        rules = _policy_rules(policy, apps)
        if not rules:
            continue
        if policy.window is not None:
            boundary = policy.window.next_boundary(now)
            if boundary is not None and (next_change is None or boundary < next_change):
                next_change = boundary
            if not policy.window.contains(now):
                continue
        members = mfa_device if policy.require_mfa else any_device
        sources: set[int] = set()
        for group_id in policy.group_ids:
            sources.update(members.get(group_id, ()))
        if sources:
            grants[policy.id] = PolicyGrant(
                policy.id, policy.name, tuple(addresses[n] for n in sorted(sources)), rules
            )
    return CompiledPolicy(policies=MappingProxyType(grants), next_change=next_change)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may this user reach that?", with the reason why."""

    allowed: bool
    policy_id: int | None
    policy_name: str | None
    reason: str


def _covers(
    dest: Destination,
    address: IPv4Address | IPv6Address,
    protocol: str,
    port: int | None,
) -> bool:
    if address.version != dest.prefix.version or address not in dest.prefix:
        return False
    if dest.protocol not in (protocol, "any"):
        return False
    if not dest.ports:
        return True
    return port is not None and any(r.first <= port <= r.last for r in dest.ports)


# Which near miss to report first: the one the user can fix soonest.
_MFA, _WINDOW, _DISABLED = 0, 1, 2


def _failures(policy: PolicySpec, now: dt.datetime, mfa: bool) -> list[tuple[int, str]]:
    failures: list[tuple[int, str]] = []
    if policy.require_mfa and not mfa:
        failures.append((_MFA, "requires MFA (sign in again with a second factor)"))
    window = policy.window
    if window is not None and not window.contains(now):
        opens = window.next_boundary(now)
        when = f"; opens next at {opens.isoformat()}" if opens is not None else ""
        failures.append((_WINDOW, f"is outside its time window ({window}{when})"))
    if not policy.enabled:
        failures.append((_DISABLED, "is disabled"))
    return failures


def explain(
    inputs: PolicyInputs,
    *,
    user_id: int,
    destination: IPv4Address | IPv6Address,
    protocol: Literal["tcp", "udp", "icmp"],
    port: int | None,
    now: dt.datetime,
    mfa: bool = True,
) -> Decision:
    """Decide one access and say why, naming the deciding policy.

    ``port`` is required for tcp/udp and must be ``None`` for icmp. When no
    policy allows the access but some policy would if not for MFA, its time
    window or being disabled, that near miss is reported (fewest problems
    first, then MFA before time window before disabled, then lowest ids).
    """
    _require_aware(now)
    if protocol not in ("tcp", "udp", "icmp"):
        raise ValueError(f"protocol must be tcp, udp or icmp, got {protocol!r}")
    if protocol == "icmp" and port is not None:
        raise ValueError("icmp has no ports; pass port=None")
    if protocol != "icmp" and (port is None or not 0 <= port <= 65535):
        raise ValueError(f"{protocol} needs a port in 0..65535, got {port!r}")
    what = f"{protocol} {destination}" + (f" port {port}" if port is not None else "")

    user = next((u for u in inputs.users if u.id == user_id), None)
    if user is None:
        return Decision(False, None, None, f"unknown user id {user_id}")
    if not user.enabled:
        return Decision(False, None, None, f"user {user.name!r} is disabled")
    if not user.group_ids:
        return Decision(False, None, None, f"user {user.name!r} is in no group, so no policy applies")

    covering = {
        a.id: a for a in inputs.apps if any(_covers(d, destination, protocol, port) for d in a.destinations)
    }
    best: tuple[tuple[int, list[int], int, int], PolicySpec, AppSpec, list[str]] | None = None
    for policy in inputs.policies:
        if not policy.group_ids & user.group_ids:
            continue
        for app_id in sorted(policy.app_ids & covering.keys()):
            failures = sorted(_failures(policy, now, mfa))
            key = (len(failures), [kind for kind, _ in failures], policy.id, app_id)
            if best is None or key < best[0]:
                best = (key, policy, covering[app_id], [text for _, text in failures])

    if best is None:
        if covering:
            names = ", ".join(f"{a.name!r}" for a in sorted(covering.values(), key=lambda a: a.id))
            detail = f"applications covering it: {names}"
        else:
            detail = "no application covers it"
        return Decision(
            False,
            None,
            None,
            f"denied by default: no policy grants any of user {user.name!r}'s groups "
            f"an application covering {what} ({detail})",
        )
    _, policy, app, problems = best
    if not problems:
        return Decision(
            True,
            policy.id,
            policy.name,
            f"allowed by policy {policy.name!r} (application {app.name!r})",
        )
    return Decision(
        False,
        policy.id,
        policy.name,
        f"policy {policy.name!r} matched {what} (application {app.name!r}) but " + " and ".join(problems),
    )
