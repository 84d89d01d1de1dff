"""Policy compiler: users, devices, applications and policies -> allow rules.

The gateway enforces the result; the compiler is pure and deterministic.

Representation. Expanding every (device, destination) pair does not scale
(10,000 devices x hundreds of destinations), so the output is grouped into
*classes*: all devices whose effective rule set is identical share one class
id, and the gateway maps source address -> class -> rules. Rules keep the id of
the policy that produced them (for counters and audit), so a class is exactly
"the set of policies that apply", and the rules of one class are the disjoint
union of those policies' rules.

Decisions the gateway renderer must know:

* Ports ``0..65535`` (:data:`ALL_PORTS`) mean "no port match" for every
  protocol: ICMP, "any", and TCP/UDP destinations without ports.
* Port ranges are merged (overlap or adjacency) per destination, protocol and
  policy in :attr:`CompiledPolicy.classes`, and across policies in
  :meth:`CompiledPolicy.expand`. Different prefixes are never merged, even when
  one contains the other; "any" and "tcp" rules for one prefix stay separate.
* Class ids are derived from the class content (a 53-bit hash of its rules), so
  a class keeps its id across compiles as long as its rules do not change;
  that keeps diffs between two compiles small. 53 bits keep ids exact in JSON.
  Collisions are resolved deterministically by probing.

Errors: :class:`ValueError` for malformed arguments (naive datetimes, a port
on an ICMP query, ...). Dangling references in the inputs grant nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections import defaultdict
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
    "Rule",
    "compile_policy",
    "explain",
    "merge_port_ranges",
]

ALL_PORTS = (0, 65535)
_ID_MASK = (1 << 53) - 1  # exact in JSON numbers (IEEE doubles)

Network = IPv4Network | IPv6Network
_DestKey = tuple[int, int, int]


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


def _merged_class(rules: tuple[Rule, ...]) -> list[tuple[Network, Protocol, int, int]]:
    """A class's rules with policy ids dropped and port ranges merged across policies."""
    spans: dict[tuple[Network, Protocol], list[tuple[int, int]]] = {}
    for rule in rules:  # sorted, so keys come out in order
        spans.setdefault((rule.destination, rule.protocol), []).append((rule.first_port, rule.last_port))
    return [
        (net, proto, first, last)
        for (net, proto), ranges in spans.items()
        for first, last in merge_port_ranges(ranges)
    ]


@dataclass(frozen=True)
class CompiledPolicy:
    """What one gateway enforces: source address -> class id -> rules."""

    classes: Mapping[int, tuple[Rule, ...]]
    source_class: Mapping[IPv4Address, int]
    next_change: dt.datetime | None

    def members(self) -> dict[int, list[IPv4Address]]:
        """Class id -> sorted source addresses in that class."""
        members: dict[int, list[IPv4Address]] = {cid: [] for cid in self.classes}
        for source in sorted(self.source_class):
            members[self.source_class[source]].append(source)
        return members

    def expand(self) -> Iterator[AllowTuple]:
        """Every allowed (source, destination, protocol, ports), ports merged.

        Yields class by class (ascending class id), sources ascending inside a
        class; only one class's merged rules are held at a time.
        """
        for class_id, sources in self.members().items():
            merged = _merged_class(self.classes[class_id])
            for source in sources:
                for net, proto, first, last in merged:
                    yield AllowTuple(source, net, proto, first, last)

    def count_tuples(self) -> int:
        """``sum(1 for _ in self.expand())`` without building the tuples."""
        return sum(
            len(_merged_class(self.classes[cid])) * len(sources) for cid, sources in self.members().items()
        )


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


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _rules_digest(rules: tuple[Rule, ...]) -> bytes:
    text = "\n".join(
        f"{r.destination}|{r.protocol}|{r.first_port}|{r.last_port}|{r.policy_id}" for r in rules
    )
    return _digest(text.encode())


def _assign_class_ids(
    digests: Mapping[frozenset[int], bytes],
) -> dict[frozenset[int], int]:
    """Content-derived ids; ties (hash collisions) probe upward in a fixed order."""
    wanted = sorted(
        (int.from_bytes(digest[:8], "big") & _ID_MASK, tuple(sorted(pids)), pids)
        for pids, digest in digests.items()
    )
    ids: dict[frozenset[int], int] = {}
    used: set[int] = set()
    for class_id, _, pids in wanted:
        while class_id in used:
            class_id = (class_id + 1) & _ID_MASK
        used.add(class_id)
        ids[pids] = class_id
    return ids


def compile_policy(
    inputs: PolicyInputs,
    *,
    now: dt.datetime,
    connector_group_ids: frozenset[int] | None = None,
) -> CompiledPolicy:
    """Compile the rules one gateway enforces at ``now``.

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
    policy_rules: dict[int, tuple[Rule, ...]] = {}
    plain: defaultdict[int, list[int]] = defaultdict(list)  # group -> policy ids
    needs_mfa: defaultdict[int, list[int]] = defaultdict(list)
    next_change: dt.datetime | None = None
    for policy in inputs.policies:
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
        policy_rules[policy.id] = rules
        for group_id in policy.group_ids:
            (needs_mfa if policy.require_mfa else plain)[group_id].append(policy.id)

    users = {u.id: u for u in inputs.users if u.enabled}
    policy_sets: dict[tuple[frozenset[int], bool], frozenset[int]] = {}
    members: defaultdict[frozenset[int], list[IPv4Address]] = defaultdict(list)
    for device in inputs.devices:
        user = users.get(device.user_id)
        if user is None:
            continue
        key = (user.group_ids, device.mfa)
        pids = policy_sets.get(key)
        if pids is None:
            found: set[int] = set()
            for group_id in user.group_ids:
                found.update(plain.get(group_id, ()))
                if device.mfa:
                    found.update(needs_mfa.get(group_id, ()))
            pids = policy_sets[key] = frozenset(found)
        if pids:
            members[pids].append(device.address)

    # Rank every rule once so each class sorts plain ints, not Rule objects.
    ordered = sorted(chain.from_iterable(policy_rules.values()), key=Rule.sort_key)
    rank = {rule: i for i, rule in enumerate(ordered)}
    policy_ranks = {pid: [rank[r] for r in rules] for pid, rules in policy_rules.items()}
    policy_digest = {pid: _rules_digest(rules) for pid, rules in policy_rules.items()}

    # A class's rules are fully determined by its policies and their rules, so
    # hashing the per-policy digests in id order is a hash of the class content.
    digests = {pids: _digest(b"".join(policy_digest[p] for p in sorted(pids))) for pids in members}
    class_ids = _assign_class_ids(digests)
    classes: dict[int, tuple[Rule, ...]] = {}
    for pids, class_id in sorted(class_ids.items(), key=lambda item: item[1]):
        ranks = sorted(chain.from_iterable(policy_ranks[p] for p in pids))
        classes[class_id] = tuple(ordered[i] for i in ranks)
    source_class = {address: class_ids[pids] for pids, addresses in members.items() for address in addresses}
    return CompiledPolicy(
        classes=MappingProxyType(classes),
        source_class=MappingProxyType(dict(sorted(source_class.items()))),
        next_change=next_change,
    )


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
