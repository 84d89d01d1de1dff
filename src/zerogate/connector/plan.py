"""What the connector should look like for a snapshot: a pure function.

The connector holds one WireGuard peer, the gateway, which it dials (its
endpoint is known, ours is not), keeping the path open with a keepalive. Its
own nftables table lets the tunnel reach the fronted subnets and nothing else,
only from client addresses, and lets nothing in from outside the tunnel but
replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

from zerogate.netops.wireguard import WgPeer

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


def plan_connector(snapshot: Mapping[str, Any], *, interface: str, listen_port: int) -> ConnectorPlan:
    group = snapshot["connector_group"]
    blocks = [str(ip_network(b)) for b in snapshot.get("client_blocks", [])]
    gateways = snapshot.get("gateways", [])
    # One gateway carries the client blocks (a WireGuard allowed-IP belongs to
    # one peer); the first by name, which the snapshot already sorts.
    peers = []
    gateway_name = None
    if gateways:
        g = gateways[0]
        gateway_name = g["name"]
        peers.append(
            WgPeer(
                g["wg_public_key"],
                tuple(blocks),
                _endpoint(g["endpoint"], int(g["port"])),
                KEEPALIVE_SECONDS,
            )
        )
    subnets = [str(ip_network(n)) for n in group.get("subnets", [])]
    probers = sorted({g["tunnel_address"] for g in gateways if g.get("tunnel_address")})
    return ConnectorPlan(
        address=f"{ip_address(snapshot['address'])}/32",
        routes=tuple(blocks),
        peers=tuple(peers),
        nft_body=render_connector_nft(
            interface, listen_port, blocks, subnets, probers, bool(group.get("snat"))
        ),
        gateway=gateway_name,
    )


def _set(name: str, elements: list[str]) -> str:
    body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    return f"  set {name} {{ type ipv4_addr; flags interval; auto-merge;{body} }}\n"


def render_connector_nft(
    interface: str,
    listen_port: int,
    client_blocks: list[str],
    subnets: list[str],
    probers: list[str],
    snat: bool,
) -> str:
    dev = f'"{interface}"'
    nat = (
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    oifname != {dev} ip saddr @clients ip daddr @fronted masquerade\n"
        "  }\n"
        if snat
        else ""
    )
    probe = (
        f"    iifname {dev} ip saddr {{ {', '.join(probers)} }} icmp type echo-request accept\n"
        if probers
        else ""
    )
    return (
        _set("clients", client_blocks) + _set("fronted", subnets) + "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    iifname {dev} ct state established,related accept\n"
        f"{probe}"
        f'    iifname {dev} drop comment "the tunnel reaches the fronted subnets, not this host"\n'
        f'    udp dport {listen_port} ct state new drop comment "WireGuard only answers the gateway it dialled"\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname {dev} ip saddr != @clients drop comment "anti-spoofing: only client addresses"\n'
        f'    iifname {dev} ip daddr != @fronted drop comment "only the subnets this group fronts"\n'
        f"    iifname {dev} accept\n"
        f"    oifname {dev} ct state established,related accept\n"
        f"    oifname {dev} drop\n"
        '    ip daddr @fronted drop comment "the fronted subnets are reached through the tunnel only"\n'
        "  }\n" + nat
    )
