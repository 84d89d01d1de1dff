"""The client's tunnel for a snapshot: a pure function (split tunnel)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

from zerogate.netops.wireguard import WgPeer

KEEPALIVE_SECONDS = 25


@dataclass(frozen=True)
class ClientPlan:
    address: str
    routes: tuple[str, ...]
    peers: tuple[WgPeer, ...]
    gateway: str | None
    endpoint: str | None


def plan_client(snapshot: Mapping[str, Any]) -> ClientPlan:
    """Only the destinations the user's policies allow go into the tunnel."""
    routes = sorted({str(ip_network(r)) for r in snapshot.get("routes", [])})
    gateways = snapshot.get("gateways", [])
    peers: list[WgPeer] = []
    gateway = endpoint = None
    if gateways:
        g = gateways[0]
        host = g["endpoint"]
        endpoint = f"[{host}]:{g['port']}" if ":" in host else f"{host}:{g['port']}"
        gateway = g["name"]
        allowed = [*routes]
        if g.get("tunnel_address"):
            allowed.append(f"{g['tunnel_address']}/32")
        peers.append(WgPeer(g["wg_public_key"], tuple(allowed), endpoint, KEEPALIVE_SECONDS))
        routes = sorted(set(allowed))
    return ClientPlan(
        address=f"{snapshot['address']}/32",
        routes=tuple(routes),
        peers=tuple(peers),
        gateway=gateway,
        endpoint=endpoint,
    )
