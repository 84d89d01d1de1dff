"""Active-active connector groups on the gateway: the pure part.

WireGuard routes by allowed IPs and one subnet can belong to one peer of an
interface only, so each connector of an active-active group gets its own
WireGuard interface on the gateway (:func:`link_name`), listening on its own
port of the gateway's range (the controller chose it: ``listen_port``), whose
single peer holds the group's subnets. Which interface a packet takes is then
policy routing: a packet mark selects a per-connector routing table.

New flows are spread with a fixed table of :data:`BUCKETS` hash buckets per
group (``jhash`` of the 5-tuple), each bucket naming a connector slot. The
buckets go to the healthy, non-draining members by rendezvous hashing
(:func:`bucket_table`): removing a member moves only its buckets, adding one
takes a fair share from each. The chosen slot is stored in the high byte of
the flow's conntrack mark (:data:`SLOT_MASK`; the low 24 bits belong to the
flow recorder and are kept with a mask), and every later packet of the flow
copies it into the packet mark, so a flow stays on its connector whatever
happens to the buckets; replies return on the same interface by conntrack.

The nftables part is its own small table (``inet zerogate_spread``), replaced
whole when the buckets change, so a failover never reloads the policy table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zerogate.model import nft
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ConnectorEntry

BUCKETS = 64  # hash buckets per group: shares of 1/64 are fine-grained enough for a few connectors
SLOT_MASK = 0xFF000000  # the conntrack mark's high byte: the connector slot (ours)
KEEP_MASK = 0x00FFFFFF  # the rest of the conntrack mark: the flow recorder's
TABLE = "zerogate_spread"
ROUTE_TABLE_BASE = 0x5A00  # routing table of slot s: ROUTE_TABLE_BASE + s
RULE_PRIORITY_BASE = 5000  # ``ip rule`` priority of slot s: before the main table (32766)
HASH_SEED = 0x7A67  # the jhash seed: fixed, so a gateway restart keeps flows' buckets


def slot_mark(slot: int) -> int:
    """The mark value (conntrack high byte, packet mark) of connector ``slot`` (1..255)."""
    if not 1 <= slot <= 255:
        raise ValueError(f"slot {slot} is outside 1..255")
    return slot << 24


def link_name(main: str, slot: int) -> str:
    """The gateway's interface for ``slot``: the main interface's name plus ``a<slot>``,
    cut to 15 characters. Unique per host as long as the main name is (wireguard-go's
    control socket ``/var/run/wireguard/NAME.sock`` is global, not per namespace)."""
    suffix = f"a{slot}"
    return main[: 15 - len(suffix)] + suffix


@dataclass(frozen=True)
class SpreadLink:
    """One active-active connector's own interface on the gateway."""

    slot: int
    connector: str
    interface: str
    listen_port: int
    peer: WgPeer
    subnets: tuple[str, ...]  # routed into ``interface`` in table ROUTE_TABLE_BASE + slot
    host_routes: tuple[str, ...]  # the connector's tunnel address/32, in the main table
    addresses: tuple[str, ...] = ()  # the gateway's tunnel address/32: the source of its probes

    @property
    def route_table(self) -> int:
        return ROUTE_TABLE_BASE + self.slot


@dataclass(frozen=True)
class SpreadGroup:
    """An active-active group: its subnets and which slot each hash bucket sends new flows to."""

    name: str
    subnets: tuple[str, ...]
    buckets: tuple[int, ...]


@dataclass(frozen=True)
class SpreadPlan:
    links: tuple[SpreadLink, ...] = ()
    groups: tuple[SpreadGroup, ...] = ()
    nft_text: str = ""  # the body of table inet zerogate_spread; "" without active-active groups

    @property
    def interfaces(self) -> tuple[str, ...]:
        return tuple(link.interface for link in self.links)


def _weight(bucket: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{bucket}/{name}".encode(), digest_size=8).digest(), "big")


def serving(members: Sequence[ConnectorEntry], up: set[str]) -> list[ConnectorEntry]:
    """The members new flows go to: up and not draining; with none, the draining ones
    that are up (they are all there is); with none up, every non-draining member (so
    traffic flows as soon as a tunnel comes up), else every member."""
    for need_up, need_serving in ((True, True), (True, False), (False, True), (False, False)):
        chosen = [c for c in members if (c.name in up or not need_up) and not (need_serving and c.draining)]
        if chosen:
            return chosen
    return []


def bucket_table(members: Sequence[ConnectorEntry], up: set[str]) -> tuple[int, ...]:
    """The slot per bucket: each bucket goes to the serving member with the highest
    rendezvous weight, so a member's removal remaps only the buckets it held."""
    chosen = [c for c in serving(members, up) if c.slot is not None]
    if not chosen:
        return ()
    return tuple(max(chosen, key=lambda c: (_weight(b, c.name), c.name)).slot or 0 for b in range(BUCKETS))


def active_active(connectors: Iterable[ConnectorEntry]) -> dict[str, list[ConnectorEntry]]:
    """Group -> its connectors, for groups whose connectors carry slots (active-active), by name."""
    groups: dict[str, list[ConnectorEntry]] = {}
    for c in sorted(connectors, key=lambda c: c.name):
        if c.slot is not None and c.listen_port is not None:
            groups.setdefault(c.connector_group, []).append(c)
    return groups


def plan_spread(
    main: str, connectors: Sequence[ConnectorEntry], up: set[str], own: Sequence[str] = ()
) -> SpreadPlan:
    """Links, buckets and the nftables table for the snapshot's active-active groups.
    ``own``: the gateway's tunnel addresses; the first goes on each link too, so
    probes through it leave from the address the connector answers through its tunnel."""
    links: list[SpreadLink] = []
    groups: list[SpreadGroup] = []
    for group, members in active_active(connectors).items():
        subnets = tuple(str(n) for n in members[0].subnets)
        for c in members:
            assert c.slot is not None and c.listen_port is not None
            host = (f"{c.address}/32",) if c.address is not None else ()
            links.append(
                SpreadLink(
                    slot=c.slot,
                    connector=c.name,
                    interface=link_name(main, c.slot),
                    listen_port=c.listen_port,
                    peer=WgPeer(c.wg_public_key, (*host, *subnets)),
                    subnets=subnets,
                    host_routes=host,
                    addresses=(f"{own[0]}/32",) if own else (),
                )
            )
        groups.append(SpreadGroup(group, subnets, bucket_table(members, up)))
    text = render_spread_table(main, groups) if groups else ""
    return SpreadPlan(tuple(links), tuple(groups), text)


def render_spread_table(main: str, groups: Sequence[SpreadGroup]) -> str:
    """``table inet zerogate_spread``: new flows from the clients (``main``) to an
    active-active group are given a slot by their bucket; every packet from the clients
    of a flow with a slot carries it as its packet mark (``ip rule fwmark``)."""
    into = nft.iifname(main)
    prerouting = [nft.base_chain("filter", "prerouting", "mangle", "accept")]
    chains = ""
    slots: set[int] = set()
    for i, g in enumerate(groups):
        if not g.buckets:
            continue
        prerouting.append(
            nft.statement(
                into,
                nft.ct_state("new"),
                nft.address("ip", "daddr", nft.anonymous_set(g.subnets)),
                f"ct mark and {SLOT_MASK:#010x} == 0",
                f"jump group_{i}",
            )
        )
        verdicts = nft.anonymous_set(f"{b} : goto slot_{s}" for b, s in enumerate(g.buckets))
        key = nft.concat("ip saddr", "ip daddr", "meta l4proto", "th sport", "th dport")
        chains += nft.chain(
            f"group_{i}", [f"jhash {key} mod {len(g.buckets)} seed {HASH_SEED:#x} vmap {verdicts}"]
        )
        slots.update(g.buckets)
    for s in sorted(slots):
        mark = f"{KEEP_MASK:#010x} or {slot_mark(s):#010x}"
        chains += nft.chain(f"slot_{s}", [f"ct mark set ct mark and {mark}"])
    prerouting.append(
        nft.statement(
            into, f"ct mark and {SLOT_MASK:#010x} != 0", f"meta mark set ct mark and {SLOT_MASK:#010x}"
        )
    )
    return nft.chain("prerouting", prerouting) + chains


def spread_report(plan: SpreadPlan) -> Mapping[str, Mapping[str, int]]:
    """Group -> connector -> buckets it holds (what the gateway's report shows)."""
    by_slot = {link.slot: link.connector for link in plan.links}
    out: dict[str, dict[str, int]] = {}
    for g in plan.groups:
        counts = out.setdefault(g.name, {})
        for s in g.buckets:
            counts[by_slot.get(s, str(s))] = counts.get(by_slot.get(s, str(s)), 0) + 1
    return out
