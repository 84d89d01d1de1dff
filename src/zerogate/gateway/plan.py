"""What the gateway should look like for a snapshot: a pure function.

Peers: every live client (address/32, session not expired) and every
connector (its tunnel address/32, plus its group's subnets when it is the
group's active connector — WireGuard's allowed-IPs are the routing table, so
one subnet belongs to one peer at a time).

nftables (table ``inet zerogate``): forwarding from the tunnel is denied by
default; a client may open a flow only if a policy grant lists its address as a
source and the destination/protocol/port in its rules. WireGuard only accepts a
packet from a peer whose allowed-IPs hold the source address, so a client
cannot use another client's address. The grants arrive as the sets' elements
(the controller cut the policy rules into disjoint intervals): this module
only renders them. Into the gateway itself the tunnel admits only replies,
pings and the connectors' VRRP state datagrams (to the gateway's own tunnel
address).

Connectors of active-active groups (``slot`` set) are not peers of the main
interface: each has its own interface (:mod:`zerogate.gateway.spread`), which
the policy table treats as part of the tunnel. A draining connector is chosen
as its standby group's active one only when no other answers probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from zerogate.gateway import flow_rules
from zerogate.gateway.spread import SpreadPlan, plan_spread
from zerogate.model import nft
from zerogate.model.dataplane import TableBody, WgPeer
from zerogate.model.snapshot import ClientPeer, ConnectorEntry, GatewayGrant, GatewaySnapshot
from zerogate.model.vrrp import STATE_PORT


@dataclass(frozen=True)
class GatewayPlan:
    listen_port: int
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    peers: tuple[WgPeer, ...]
    nft_body: TableBody
    live_clients: tuple[str, ...]
    next_expiry: datetime | None
    spread: SpreadPlan = field(default_factory=SpreadPlan)


def _expired(client: ClientPeer, now: datetime) -> bool:
    return client.session_expires_at is not None and client.session_expires_at <= now


def choose_active(
    connectors: Sequence[ConnectorEntry],
    up: set[str],
    current: Mapping[str, str],
    masters: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Per connector group, the connector that carries its subnets.

    A connector of the group that claims to be its VRRP master (``masters``:
    group -> connector, the unexpired claims) carries it: keepalived decided,
    and the LAN sends the virtual IP's traffic to that one. Without a claim:
    keep the current one while it answers probes; else the first (by name)
    that answers; with none answering keep the current, else the first by
    name, so traffic flows as soon as a tunnel comes up. Draining connectors
    count as answering only when no other one does. Active-active groups
    (connectors with a slot) have no active connector.
    """
    by_group: dict[str, list[str]] = {}
    draining = {c.name for c in connectors if c.draining}
    for c in sorted(connectors, key=lambda c: c.name):
        if c.slot is None:
            by_group.setdefault(c.connector_group, []).append(c.name)
    active: dict[str, str] = {}
    for group, names in by_group.items():
        claimant = (masters or {}).get(group)
        if claimant in names:
            active[group] = claimant
            continue
        cur = current.get(group)
        live = [n for n in names if n in up and n not in draining] or [n for n in names if n in up]
        if cur in live:
            active[group] = cur
        elif live:
            active[group] = live[0]
        elif cur in names:
            active[group] = cur
        else:
            active[group] = names[0]
    return active


RenderNft = Callable[[str, Sequence[str], Sequence[GatewayGrant], Sequence[str], Sequence[str]], TableBody]


def plan_gateway(
    snapshot: GatewaySnapshot,
    *,
    interface: str,
    now: datetime,
    active: Mapping[str, str],
    render_nft: RenderNft | None = None,
    up: set[str] | None = None,
) -> GatewayPlan:
    """``render_nft`` (default :func:`render_gateway_table`) lets the daemon reuse the
    table text when only the active connectors changed (a failover). ``up``: the
    connectors answering probes (active-active groups spread over those)."""
    tunnel, blocks = snapshot.tunnel_addresses, snapshot.client_blocks
    addresses = tuple(f"{a}/{b.prefixlen}" for a, b in zip(tunnel, blocks, strict=False))

    peers: list[WgPeer] = []
    live: list[str] = []
    expiries: list[datetime] = []
    for c in snapshot.clients:
        if c.address is None or _expired(c, now):
            continue
        peers.append(WgPeer(c.wg_public_key, (f"{c.address}/32",)))
        live.append(str(c.address))
        if c.session_expires_at is not None:
            expiries.append(c.session_expires_at)
    routes: set[str] = set()
    spread = plan_spread(interface, snapshot.connectors, up or set(), [str(a) for a in tunnel])
    for cn in snapshot.connectors:
        if cn.slot is not None and cn.listen_port is not None:
            continue  # its own interface (spread)
        allowed = [f"{cn.address}/32"] if cn.address is not None else []
        if active.get(cn.connector_group) == cn.name:
            allowed += [str(n) for n in cn.subnets]
            routes.update(str(n) for n in cn.subnets)
        peers.append(WgPeer(cn.wg_public_key, tuple(allowed)))

    return GatewayPlan(
        listen_port=snapshot.gateway.port_first if snapshot.gateway else 51820,
        addresses=addresses,
        routes=tuple(sorted(routes)),
        peers=tuple(peers),
        nft_body=(render_nft or render_gateway_table)(
            interface, live, snapshot.policy.grants, [str(a) for a in tunnel], spread.interfaces
        ),
        live_clients=tuple(live),
        next_expiry=min(expiries) if expiries else None,
        spread=spread,
    )


def _set(name: str, type_: str, elements: Sequence[str], interval: bool) -> str:
    return f"  {nft.set_definition(name, type_, elements, interval=interval)}\n"


_SERVICE_TYPE = nft.concat("ipv4_addr", "inet_proto", "inet_service")
_SERVICE_KEY = nft.concat("ip daddr", nft.META_L4PROTO, "th dport")


def render_grant(grant: GatewayGrant) -> tuple[str, list[str]]:
    """(interval set definitions, rules) for one policy grant; nothing for a
    grant without sources or destinations. The source set ``p<id>_src``
    itself is declared by the caller."""
    pid = grant.policy_id
    if not grant.sources:
        return "", []
    src = nft.address("ip", "saddr", nft.set_ref(f"p{pid}_src"))
    sets = ""
    rules: list[str] = []
    if grant.services:
        sets += _set(f"p{pid}_svc", _SERVICE_TYPE, grant.services, True)
        rules.append(nft.statement(src, _SERVICE_KEY, nft.set_ref(f"p{pid}_svc"), "accept"))
    if grant.icmp:
        sets += _set(f"p{pid}_icmp", "ipv4_addr", grant.icmp, True)
        icmp_to = nft.address("ip", "daddr", nft.set_ref(f"p{pid}_icmp"))
        rules.append(nft.statement(src, icmp_to, nft.l4proto("icmp"), "accept"))
    if grant.any_protocol:
        sets += _set(f"p{pid}_any", "ipv4_addr", grant.any_protocol, True)
        rules.append(nft.statement(src, nft.address("ip", "daddr", nft.set_ref(f"p{pid}_any")), "accept"))
    return sets, flow_rules.mark_accepts(rules, pid)  # the policy id in the ct mark: flow records


def _by_address(addresses: Iterable[str]) -> list[str]:
    return sorted(addresses, key=lambda a: tuple(int(x) for x in a.split(".")))


def render_gateway_nft(
    interface: str,
    live_clients: Sequence[str],
    grants: Sequence[GatewayGrant],
    own_addresses: Sequence[str] = (),
    links: Sequence[str] = (),
) -> str:
    """The body of ``table inet zerogate`` for the gateway."""
    return render_gateway_table(interface, live_clients, grants, own_addresses, links).text


def render_gateway_table(
    interface: str,
    live_clients: Sequence[str],
    grants: Sequence[GatewayGrant],
    own_addresses: Sequence[str] = (),
    links: Sequence[str] = (),
) -> TableBody:
    """The gateway's table, with the live clients and every grant's sources as
    plain sets, so that a change of who may connect is an element update.
    ``own_addresses`` (the gateway's tunnel addresses) receive the connectors'
    VRRP state datagrams (:mod:`zerogate.gateway.claims`); ``links`` (the
    active-active connectors' interfaces) are part of the tunnel."""
    plain: dict[str, frozenset[str]] = {"clients": frozenset(live_clients)}
    skeleton = [_set("clients", "ipv4_addr", (), False)]
    text = [_set("clients", "ipv4_addr", sorted(plain["clients"]), False)]
    rules: list[str] = []
    for g in sorted(grants, key=lambda g: g.policy_id):
        sets, grant_rules = render_grant(g)
        if not grant_rules:
            continue
        name = f"p{g.policy_id}_src"
        sources = frozenset(g.sources)
        plain[name] = sources
        skeleton.append(_set(name, "ipv4_addr", (), False) + sets)
        text.append(_set(name, "ipv4_addr", _by_address(sources), False) + sets)
        rules += grant_rules
    chains = _gateway_chains(interface, rules, own_addresses, links)
    return TableBody("".join(text) + chains, "".join(skeleton) + chains, plain)


def _gateway_chains(
    interface: str, grant_rules: Sequence[str], own_addresses: Sequence[str], links: Sequence[str] = ()
) -> str:
    into, out_of = nft.iifname(interface), nft.oifname(interface)
    if links:
        into = nft.iifname_in([interface, *links])
        out_of = "oifname " + nft.anonymous_set(nft.quoted(n, "interface name") for n in [interface, *links])
    forward = nft.chain(
        "forward",
        [
            nft.base_chain("filter", "forward", "filter", "accept"),
            nft.statement(into, "jump from_tunnel"),
            nft.statement(out_of, "drop", nft.comment("nothing enters the tunnel from outside it")),
        ],
    )
    not_live = nft.address("ip", "saddr", nft.set_ref("clients"), negate=True)
    from_tunnel = nft.chain(
        "from_tunnel",
        [
            *nft.conntrack_preamble(),
            nft.statement(not_live, "drop", nft.comment("only live client peers open flows")),
            *grant_rules,
            *flow_rules.refusal_rules(),
            nft.statement("counter", nft.l4proto("tcp"), "reject with tcp reset"),
            nft.statement("counter", "reject with icmpx admin-prohibited"),
        ],
    )
    # VRRP state from connectors (zerogate.gateway.claims): to our own tunnel address only;
    # one datagram a second per master, so the limit only bounds a flood from a peer
    vrrp_state = (
        [
            nft.statement(
                into,
                nft.address("ip", "daddr", nft.one_or_set(_by_address(own_addresses))),
                nft.port("udp", "dport", STATE_PORT),
                "limit rate 200/second burst 400 packets accept",
            )
        ]
        if own_addresses
        else []
    )
    input_ = nft.chain(
        "input",
        [
            nft.base_chain("filter", "input", "filter", "accept"),
            nft.statement(into, nft.ct_state("established", "related"), "accept"),
            nft.statement(into, nft.icmp_type("icmp", ["echo-request"]), "limit rate 20/second accept"),
            *vrrp_state,
            nft.statement(into, "drop"),
        ],
    )
    return flow_rules.refused_set() + forward + from_tunnel + input_
