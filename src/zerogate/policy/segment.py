"""Segment learning and review (pure): observed connections become flow records,
flow records become proposed rules, and rules are checked against the flows
before anything is enforced.

- :func:`derive_flows` joins conntrack entries with the asset's listeners and
  addresses: a connection to a local address and a listening port is an
  inbound flow (peer = original source, process = the listener's); with
  ``outbound`` a connection from a local address to another host is an
  outbound flow. Traffic of the host with itself (loopback, own addresses)
  never needs a rule and is left out, and so is traffic to a port nothing
  listens on.
- :func:`merge` folds observations into the asset's flow records (first and
  last seen, counts) and keeps at most ``limit`` records, reporting how many
  new ones it refused.
- :func:`propose` makes one rule per (protocol, port) of the inbound flows,
  with its evidence; :func:`stale` finds approved rules no flow used since a
  time (proposed deletions); :func:`simulate` replays flows against rules.

Every result comes in a fixed order (flows by key, rules by protocol and port,
sources by address), so the same input always gives the same output.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from zerogate.model.segment import (
    Address,
    Connection,
    Evidence,
    Flow,
    FlowKey,
    Group,
    Listener,
    Network,
    ProposedRule,
    SimulationResult,
    Source,
    SourceVerdict,
    host_network,
)

DEFAULT_MIN_PEERS = 4  # peers of one /24 (or /64) before the rule names the subnet
DEFAULT_FLOW_LIMIT = 10_000  # flow records kept per asset


# --------------------------------------------------------------------------- observation


def _listener_for(listeners: Sequence[Listener], connection: Connection) -> Listener | None:
    """The socket that takes ``connection``: as the kernel does, a socket bound to
    the address wins over one bound to its family's wildcard, which wins over ``*``."""
    best: tuple[int, Listener] | None = None
    for listener in listeners:
        if not listener.accepts(connection.protocol, connection.dst, connection.dport):
            continue
        address = listener.address
        rank = 0 if address is None else (1 if address.is_unspecified else 2)
        if best is None or rank > best[0]:
            best = (rank, listener)
    return None if best is None else best[1]


def _own(address: Address, local: frozenset[Address]) -> bool:
    return address.is_loopback or address in local


def derive_timed_flows(
    observed: Iterable[tuple[datetime, Connection]],
    listeners: Iterable[Listener],
    local_addresses: Iterable[Address],
    *,
    outbound: bool = False,
) -> tuple[Flow, ...]:
    """One flow per connection seen at its time (conntrack events); not merged."""
    local = frozenset(local_addresses)
    sockets = tuple(listeners)
    flows: list[Flow] = []
    for at, conn in observed:
        if conn.dst in local and not _own(conn.src, local):
            listener = _listener_for(sockets, conn)
            if listener is not None:
                flows.append(Flow(conn.protocol, conn.dport, conn.src, listener.process, at, at))
        elif outbound and conn.src in local and not _own(conn.dst, local):
            flows.append(Flow(conn.protocol, conn.dport, conn.dst, None, at, at, direction="outbound"))
    return tuple(flows)


def derive_flows(
    connections: Iterable[Connection],
    listeners: Iterable[Listener],
    local_addresses: Iterable[Address],
    *,
    at: datetime,
    outbound: bool = False,
) -> tuple[Flow, ...]:
    """One flow per connection of a ``conntrack -L`` snapshot taken at ``at``; not merged."""
    return derive_timed_flows(((at, c) for c in connections), listeners, local_addresses, outbound=outbound)


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True, slots=True)
class MergeResult:
    flows: tuple[Flow, ...]
    dropped: int = 0  # distinct new flows refused because the asset had ``limit`` records


def _fold(a: Flow, b: Flow) -> Flow:
    return replace(
        a,
        first_seen=min(a.first_seen, b.first_seen),
        last_seen=max(a.last_seen, b.last_seen),
        count=a.count + b.count,
    )


def merge(
    existing: Iterable[Flow], observed: Iterable[Flow], *, limit: int = DEFAULT_FLOW_LIMIT
) -> MergeResult:
    """``existing`` records updated with ``observed`` ones. Known flows always
    update; a new flow is added while there are fewer than ``limit`` records
    (observations in key order), the others are counted in ``dropped``."""
    if limit < 1:
        raise ValueError(f"the flow limit must be at least 1, not {limit}")
    records: dict[FlowKey, Flow] = {}
    for flow in existing:
        records[flow.key] = _fold(records[flow.key], flow) if flow.key in records else flow
    refused: set[FlowKey] = set()
    for flow in sorted(observed, key=lambda f: (f.key, f.first_seen)):
        if flow.key in records:
            records[flow.key] = _fold(records[flow.key], flow)
        elif len(records) < limit:
            records[flow.key] = flow
        else:
            refused.add(flow.key)
    return MergeResult(tuple(records[k] for k in sorted(records)), len(refused))


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True, slots=True)
class Proposal:
    """The rules proposed for one asset. All of them are here even beyond
    ``max_rules``: then ``over_cap`` says so and the admin decides."""

    rules: tuple[ProposedRule, ...]
    max_rules: int

    @property
    def over_cap(self) -> bool:
        return len(self.rules) > self.max_rules

    @property
    def warning(self) -> str | None:
        if not self.over_cap:
            return None
        return (
            f"{len(self.rules)} rules proposed, more than the cap of {self.max_rules}: "
            "group the peers (known groups) or raise the cap"
        )


def _flow_order(flow: Flow) -> tuple[FlowKey, datetime, datetime, int]:
    return (flow.key, flow.first_seen, flow.last_seen, flow.count)


def _address_order(address: Address) -> tuple[int, int]:
    return (address.version, int(address))


def _source_order(source: Source) -> tuple[int, str, int, int, int]:
    if isinstance(source, Group):
        return (0, source.name, 0, 0, 0)
    return (1, "", source.version, int(source.network_address), source.prefixlen)


def _sources(peers: Sequence[Address], groups: Sequence[Group], min_peers: int) -> tuple[Source, ...]:
    fitting = [g for g in groups if all(g.contains(p) for p in peers)]
    if fitting:
        return (min(fitting, key=lambda g: (g.size, g.name)),)
    buckets: dict[Network, list[Address]] = defaultdict(list)
    for peer in peers:
        buckets[ipaddress.ip_network((peer, 24 if peer.version == 4 else 64), strict=False)].append(peer)
    sources: list[Source] = []
    for subnet, members in buckets.items():
        if len(members) >= min_peers:
            sources.append(subnet)
        else:
            sources.extend(host_network(p) for p in members)
    return tuple(sorted(sources, key=_source_order))


def _evidence(flows: Sequence[Flow]) -> Evidence:
    return Evidence(
        flows=len(flows),
        connections=sum(f.count for f in flows),
        peers=len({f.peer for f in flows}),
        first_seen=min(f.first_seen for f in flows),
        last_seen=max(f.last_seen for f in flows),
    )


def propose(
    flows: Iterable[Flow],
    known_groups: Mapping[str, Iterable[Network]],
    *,
    max_rules: int,
    min_peers: int = DEFAULT_MIN_PEERS,
) -> Proposal:
    """One rule per (protocol, port) of the inbound ``flows``. Its sources are
    the tightest known group holding every peer; else per /24 (IPv4) or /64
    (IPv6), the subnet when at least ``min_peers`` peers share it, the single
    addresses otherwise."""
    if max_rules < 1 or min_peers < 1:
        raise ValueError("max_rules and min_peers must be at least 1")
    groups = [Group(name, tuple(nets)) for name, nets in sorted(known_groups.items())]
    by_service: dict[tuple[str, int], list[Flow]] = defaultdict(list)
    for flow in flows:
        if flow.direction == "inbound":
            by_service[(flow.protocol, flow.port)].append(flow)
    rules = []
    for (_, port), members in sorted(by_service.items()):
        peers = sorted({f.peer for f in members}, key=_address_order)
        sources = _sources(peers, groups, min_peers)
        rules.append(ProposedRule(members[0].protocol, port, port, sources, _evidence(members)))
    return Proposal(tuple(rules), max_rules)


def stale(rules: Iterable[ProposedRule], flows: Iterable[Flow], since: datetime) -> tuple[ProposedRule, ...]:
    """The ``rules`` (in their order) that no inbound flow used at or after ``since``:
    proposed deletions."""
    recent = [f for f in flows if f.direction == "inbound" and f.last_seen >= since]
    return tuple(r for r in rules if not any(r.allows(f) for f in recent))


def simulate(flows: Iterable[Flow], rules: Iterable[ProposedRule]) -> SimulationResult:
    """Replay the inbound ``flows`` against ``rules``: per source address, which
    flows would pass and which would be blocked."""
    candidates = tuple(rules)
    allowed: dict[Address, list[Flow]] = defaultdict(list)
    blocked: dict[Address, list[Flow]] = defaultdict(list)
    for flow in sorted((f for f in flows if f.direction == "inbound"), key=_flow_order):
        verdict = allowed if any(r.allows(flow) for r in candidates) else blocked
        verdict[flow.peer].append(flow)
    peers = sorted(allowed.keys() | blocked.keys(), key=_address_order)
    return SimulationResult(
        tuple(SourceVerdict(p, tuple(allowed.get(p, ())), tuple(blocked.get(p, ()))) for p in peers)
    )
