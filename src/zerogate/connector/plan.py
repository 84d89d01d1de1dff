"""What the connector should look like for a snapshot: a pure function.

The connector holds one WireGuard peer, the gateway, which it dials (its
endpoint is known, ours is not), keeping the path open with a keepalive. Its
own nftables table lets the tunnel reach the fronted subnets and nothing else,
only from client addresses, and lets nothing in from outside the tunnel but
replies.

Forwarding is a switch for the whole host, so the forward chain also decides
what happens to traffic that has nothing to do with zerogate. In nftables an
``accept`` in our table does not stop the other tables' chains on the same
hook, but a ``drop`` (a drop policy too) anywhere is final. Hence two modes:

- strict (the host did not forward before zerogate): ``policy drop``; only
  tunnel -> fronted subnets from client addresses and the replies pass, so a
  packet from the WAN routed through the host (a hairpin) goes nowhere;
- shared (the host forwarded before, or runs Docker): ``policy accept`` so the
  host's own forwarding keeps working; everything that touches the tunnel or
  the fronted subnets is still dropped except those paths. The rest is left
  to the host's own firewall.

Failover with SNAT off. The LAN routes the client pool to the serving
connector (or to the VRRP virtual IP). When another connector takes over, the
flows it carries were opened through the old one: this host has no conntrack
entry for them. A client's packet is picked up mid-stream (the kernel's
default ``nf_conntrack_tcp_loose=1``) and passes, the tunnel -> subnets path
does not look at ``ct state``; but a server that only sends (a download) has
its next segment leave the LAN first, and ``ct state established`` alone would
drop it for good. So with SNAT off, TCP segments from the fronted subnets to
the client blocks that carry ACK and no SYN also pass: they can continue a
flow, never open one (a new connection starts with a SYN without ACK). This is
safe because the gateway decides, not us: its ``from_tunnel`` chain accepts
only ``ct state established,related`` or a live client's source address, so a
packet from the LAN reaches a client only as part of a flow that client opened
(the gateway's conntrack entry survives the failover, it does not depend on
which connector peer carried the flow). The rule has no ``ct state`` match on
purpose: with ``nf_conntrack_tcp_loose=0`` the kernel refuses mid-stream
pickups and marks them ``invalid``, and the flow must still continue. UDP is
not included: a UDP flow resumes with the client's next datagram, which this
host then tracks, and the LAN keeps no way to send unsolicited UDP into the
tunnel. With SNAT on, a failed-over flow cannot continue anyway (the server
answers the old connector's address; see the README).

VRRP (the group has a virtual IP): the connectors run keepalived on the LAN.
VRRPv3 has no authentication, so whoever may send VRRP advertisements may take
the virtual IP and the group's traffic; the input chain admits VRRP (IP
protocol 112) only from the configured unicast peers or, without peers, as
multicast to 224.0.0.18 from the virtual IP's subnet with TTL 255 (RFC 5798:
a router discards advertisements with another TTL, so they come from the same
link), and drops every other VRRP packet. With SNAT on, the connector
translates to the virtual IP rather than its own address, so the LAN sees one
stable address whichever connector is master.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from zerogate.model import nft
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ConnectorSnapshot

KEEPALIVE_SECONDS = 5
VRRP_PROTOCOL = 112  # IANA; written as a number so the rule does not depend on /etc/protocols
VRRP_MULTICAST = "224.0.0.18"
VRRP_TTL = 255
MAX_VRRP_PEERS = 16


@dataclass(frozen=True)
class VrrpFilter:
    """What the table needs of a group's VRRP: the virtual IP (the SNAT source),
    the unicast peers, or (no peers) the subnet multicast advertisements come from."""

    virtual_ip: str
    peers: tuple[str, ...]
    subnet: str | None


@dataclass(frozen=True)
class ConnectorPlan:
    address: str
    routes: tuple[str, ...]
    peers: tuple[WgPeer, ...]
    nft_body: str
    gateway: str | None


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def vrrp_filter(virtual_ip: str, subnets: Sequence[str], peers: Sequence[str]) -> VrrpFilter:
    """The VRRP part of the table; ``ValueError`` for a peer that is not an IPv4
    address (the settings validate it too; this is what reaches nft text).

    The multicast source subnet is the most specific fronted subnet holding the
    virtual IP (the controller refuses a virtual IP outside them); the
    connectors' own LAN addresses must lie in it, or ``vrrp_peers`` is needed.
    """
    try:
        vip = IPv4Address(virtual_ip)
    except ValueError:
        raise ValueError("the group's virtual IP is not an IPv4 address: VRRP runs over IPv4 only") from None
    if len(peers) > MAX_VRRP_PEERS:
        raise ValueError(f"vrrp_peers: at most {MAX_VRRP_PEERS} addresses")
    checked = []
    for p in peers:
        try:
            checked.append(IPv4Address(p))
        except ValueError:
            raise ValueError("vrrp_peers: each peer must be an IPv4 address") from None
    homes = [n for n in (IPv4Network(s) for s in subnets if ":" not in s) if vip in n]
    home = max(homes, key=lambda n: n.prefixlen, default=None)
    if home is None and not checked:
        raise ValueError(
            "the group's virtual IP is in none of its subnets, so multicast VRRP has no source "
            "subnet to admit: set vrrp_peers"
        )
    return VrrpFilter(
        str(vip),
        tuple(str(p) for p in sorted(set(checked))),
        str(home) if home is not None else None,
    )


def plan_connector(
    snapshot: ConnectorSnapshot,
    *,
    interface: str,
    listen_port: int,
    strict: bool,
    vrrp_peers: Sequence[str] = (),
) -> ConnectorPlan:
    """``strict``: the host forwarded nothing before zerogate (see the module docstring).
    ``vrrp_peers``: the other connectors' LAN addresses for unicast VRRP (empty:
    multicast); used only when the group has a virtual IP."""
    if snapshot.address is None:
        raise ValueError("the snapshot gives this connector no tunnel address")
    group = snapshot.connector_group
    blocks = [str(b) for b in snapshot.client_blocks]
    gateways = snapshot.gateways
    # One gateway carries the client blocks (a WireGuard allowed-IP belongs to
    # one peer); the first by name, which the snapshot already sorts.
    peers = []
    gateway_name = None
    if gateways:
        g = gateways[0]
        gateway_name = g.name
        peers.append(WgPeer(g.wg_public_key, tuple(blocks), _endpoint(g.endpoint, g.port), KEEPALIVE_SECONDS))
    subnets = [str(n) for n in group.subnets]
    probers = sorted({str(g.tunnel_address) for g in gateways if g.tunnel_address is not None})
    vip = group.vrrp_virtual_ip
    vrrp = vrrp_filter(str(vip), subnets, vrrp_peers) if vip is not None else None
    return ConnectorPlan(
        address=f"{snapshot.address}/32",
        routes=tuple(blocks),
        peers=tuple(peers),
        nft_body=render_connector_nft(
            interface, listen_port, blocks, subnets, probers, group.snat, strict=strict, vrrp=vrrp
        ),
        gateway=gateway_name,
    )


def _set(name: str, elements: list[str]) -> str:
    return f"  {nft.set_definition(name, 'ipv4_addr', elements, interval=True, auto_merge=True)}\n"


def render_connector_nft(
    interface: str,
    listen_port: int,
    client_blocks: list[str],
    subnets: list[str],
    probers: list[str],
    snat: bool,
    *,
    strict: bool,
    vrrp: VrrpFilter | None = None,
) -> str:
    into, out_of = nft.iifname(interface), nft.oifname(interface)
    clients, fronted = nft.set_ref("clients"), nft.set_ref("fronted")
    from_probers = nft.address("ip", "saddr", nft.anonymous_set(probers))
    echo = nft.icmp_type("icmp", ["echo-request"])
    probe = [nft.statement(into, from_probers, echo, "accept")] if probers else []
    input_ = [
        nft.base_chain("filter", "input", "filter", "accept"),
        nft.statement(into, nft.ct_state("established", "related"), "accept"),
        *probe,
        nft.statement(into, "drop", nft.comment("the tunnel reaches the fronted subnets, not this host")),
        nft.statement(
            nft.port("udp", "dport", listen_port),
            nft.ct_state("new"),
            "drop",
            nft.comment("WireGuard only answers the gateway it dialled"),
        ),
        *(_vrrp_input(vrrp) if vrrp is not None else []),
    ]
    forward = [
        nft.base_chain("filter", "forward", "filter", "drop" if strict else "accept"),
        nft.statement(
            into,
            nft.address("ip", "saddr", clients, negate=True),
            "drop",
            nft.comment("anti-spoofing: only client addresses"),
        ),
        nft.statement(
            into,
            nft.address("ip", "daddr", fronted, negate=True),
            "drop",
            nft.comment("only the subnets this group fronts"),
        ),
        nft.statement(into, "accept"),
        nft.statement(out_of, nft.ct_state("established", "related"), "accept"),
        *([] if snat else [_failed_over(out_of, fronted, clients)]),
        *([] if strict else _shared_tail(out_of, fronted)),
    ]
    nat = [
        nft.base_chain("nat", "postrouting", "srcnat", "accept"),
        nft.statement(
            nft.oifname(interface, negate=True),
            nft.address("ip", "saddr", clients),
            nft.address("ip", "daddr", fronted),
            nft.statement("snat", "ip", "to", vrrp.virtual_ip) if vrrp is not None else "masquerade",
        ),
    ]
    return (
        _set("clients", client_blocks)
        + _set("fronted", subnets)
        + nft.chain("input", input_)
        + nft.chain("forward", forward)
        + (nft.chain("postrouting", nat) if snat else "")
    )


def _failed_over(out_of: str, fronted: str, clients: str) -> str:
    """SNAT off: a LAN -> client TCP segment that can only continue a flow (ACK,
    no SYN), for flows opened through another connector (see the module docstring)."""
    return nft.statement(
        out_of,
        nft.address("ip", "saddr", fronted),
        nft.address("ip", "daddr", clients),
        "tcp flags & (syn | ack) == ack",
        "accept",
        nft.comment(
            "continues a flow opened via another connector; the gateway admits only flows clients opened"
        ),
    )


def _vrrp_input(vrrp: VrrpFilter) -> list[str]:
    """Admit VRRP from the group's peers only, drop the rest (VRRPv3 has no authentication)."""
    proto = f"ip protocol {VRRP_PROTOCOL}"
    if vrrp.peers:
        admit = [
            nft.statement(
                nft.address("ip", "saddr", nft.anonymous_set(vrrp.peers)),
                proto,
                "accept",
                nft.comment("VRRP from the unicast peers of this group"),
            )
        ]
    else:  # vrrp_filter refuses a virtual IP without a home subnet when there are no peers
        admit = [
            nft.statement(
                nft.address("ip", "saddr", vrrp.subnet or VRRP_MULTICAST),
                nft.address("ip", "daddr", VRRP_MULTICAST),
                f"ip ttl {VRRP_TTL}",
                proto,
                "accept",
                nft.comment("VRRP multicast from the virtual IP subnet, same link (TTL 255)"),
            )
        ]
    return [
        *admit,
        nft.statement(proto, "drop", nft.comment("VRRP from anyone else: it could take the virtual IP")),
    ]


def _shared_tail(out_of: str, fronted: str) -> list[str]:
    """Without a drop policy (a host that forwards for others): what touches the
    tunnel or the fronted subnets and was not accepted above goes no further."""
    return [
        nft.statement(out_of, "drop"),
        nft.statement(
            nft.address("ip", "daddr", fronted),
            "drop",
            nft.comment("the fronted subnets are reached through the tunnel only"),
        ),
        nft.statement(
            nft.address("ip", "saddr", fronted),
            "drop",
            nft.comment("the fronted subnets send only replies through this host"),
        ),
    ]


def forwarding_notice(*, forwarded_before: bool, docker: bool, subnets: list[str]) -> str:
    """The one log line that says which forwarding mode the connector runs in, and why."""
    fronted = ", ".join(subnets) or "(no subnets yet)"
    if not (forwarded_before or docker):
        return (
            "this host did not forward packets before zerogate: the connector forwards only "
            f"tunnel → {fronted} and their replies; everything else through it is dropped"
        )
    why = (
        f"IPv4 forwarding was {'on' if forwarded_before else 'off'} before zerogate, "
        f"Docker {'detected' if docker else 'not detected'}"
    )
    return (
        f"this host forwards packets of its own ({why}): zerogate leaves that forwarding to the "
        f"host's own firewall and drops only what touches the tunnel or {fronted} outside "
        "tunnel → subnets and their replies; hairpin traffic not involving the tunnel is the "
        "host's business (to forward nothing else: stop the connector, set "
        "net.ipv4.ip_forward=0, do not run Docker here, start it again)"
    )
