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
"""

from __future__ import annotations

from dataclasses import dataclass

from zerogate.model import nft
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ConnectorSnapshot

KEEPALIVE_SECONDS = 5


@dataclass(frozen=True)
class ConnectorPlan:
    address: str
    routes: tuple[str, ...]
    peers: tuple[WgPeer, ...]
    nft_body: str
    gateway: str | None


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plan_connector(
    snapshot: ConnectorSnapshot, *, interface: str, listen_port: int, strict: bool
) -> ConnectorPlan:
    """``strict``: the host forwarded nothing before zerogate (see the module docstring)."""
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
    return ConnectorPlan(
        address=f"{snapshot.address}/32",
        routes=tuple(blocks),
        peers=tuple(peers),
        nft_body=render_connector_nft(
            interface, listen_port, blocks, subnets, probers, group.snat, strict=strict
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
        *([] if strict else _shared_tail(out_of, fronted)),
    ]
    nat = [
        nft.base_chain("nat", "postrouting", "srcnat", "accept"),
        nft.statement(
            nft.oifname(interface, negate=True),
            nft.address("ip", "saddr", clients),
            nft.address("ip", "daddr", fronted),
            "masquerade",
        ),
    ]
    return (
        _set("clients", client_blocks)
        + _set("fronted", subnets)
        + nft.chain("input", input_)
        + nft.chain("forward", forward)
        + (nft.chain("postrouting", nat) if snat else "")
    )


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
