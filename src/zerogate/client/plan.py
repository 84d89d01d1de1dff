"""The client's tunnel for a snapshot: a pure function (split tunnel)."""

from __future__ import annotations

from dataclasses import dataclass

from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ClientSnapshot

KEEPALIVE_SECONDS = 25


@dataclass(frozen=True)
class ClientPlan:
    address: str
    routes: tuple[str, ...]
    peers: tuple[WgPeer, ...]
    gateway: str | None
    endpoint: str | None


def plan_client(snapshot: ClientSnapshot) -> ClientPlan:
    """Only the destinations the user's policies allow go into the tunnel."""
    if snapshot.address is None:
        raise ValueError("the snapshot gives this device no tunnel address")
    routes = sorted({str(r) for r in snapshot.routes})
    peers: list[WgPeer] = []
    gateway = endpoint = None
    if snapshot.gateways:
        g = snapshot.gateways[0]
        endpoint = f"[{g.endpoint}]:{g.port}" if ":" in g.endpoint else f"{g.endpoint}:{g.port}"
        gateway = g.name
        allowed = [*routes]
        if g.tunnel_address is not None:
            allowed.append(f"{g.tunnel_address}/32")
        peers.append(WgPeer(g.wg_public_key, tuple(allowed), endpoint, KEEPALIVE_SECONDS))
        routes = sorted(set(allowed))
    return ClientPlan(
        address=f"{snapshot.address}/32",
        routes=tuple(routes),
        peers=tuple(peers),
        gateway=gateway,
        endpoint=endpoint,
    )
