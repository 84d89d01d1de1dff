"""The gateway's peers' endpoints across restarts.

Connectors and clients dial the gateway (they sit behind NAT and firewalls),
so a fresh interface knows none of their endpoints and they keep sending on
sessions it no longer has, which it drops in silence; WireGuard alone needs
15 s or more to notice. So the gateway keeps the endpoints its peers last
handshook from in ``endpoints.json`` and, on start, points the peers back at
them and sends each one packet: that starts a new handshake at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from zerogate.model.snapshot import GatewaySnapshot
from zerogate.netops.icmp import Prober
from zerogate.netops.wireguard import PeerStatus, valid_endpoint, valid_key

log = logging.getLogger(__name__)


def load_endpoints(path: Path) -> dict[str, str]:
    """The saved public key -> endpoint map; a damaged file or entry is skipped with a warning."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s): peers re-dial this gateway by themselves", path, exc)
        return {}
    if not isinstance(raw, dict):
        log.warning("ignoring %s: not a JSON object of public key -> endpoint", path)
        return {}
    good = {k: v for k, v in raw.items() if isinstance(v, str) and valid_key(k) and valid_endpoint(v)}
    if len(good) < len(raw):
        log.warning("ignoring %d malformed entries in %s", len(raw) - len(good), path)
    return good


def endpoints_to_keep(
    peers: Sequence[PeerStatus], planned: set[str], previous: Mapping[str, str]
) -> dict[str, str]:
    """Endpoints learned from a handshake in this run, else the saved one, for planned peers only."""
    learned = {
        p.public_key: p.endpoint
        for p in peers
        if p.public_key in planned and p.latest_handshake and p.endpoint and valid_endpoint(p.endpoint)
    }
    kept = {k: v for k, v in previous.items() if k in planned and k not in learned}
    return dict(sorted((kept | learned).items()))


def tunnel_peers(snapshot: GatewaySnapshot) -> dict[str, tuple[str, str, str]]:
    """public key -> (role, name, tunnel address) for the snapshot's connectors and clients."""
    out = {
        p.wg_public_key: ("client", f"device {p.device_id}", str(p.address))
        for p in snapshot.clients
        if p.address is not None
    }
    for c in snapshot.connectors:
        if c.address is not None:
            out[c.wg_public_key] = ("connector", c.name, str(c.address))
    return out


def nudge(addresses: Sequence[str]) -> None:
    """One ICMP echo into the tunnel to each address: a peer without a session
    handshakes before the packet leaves."""
    try:
        prober = Prober()
    except OSError as exc:
        log.warning("could not open an ICMP socket to wake the peers (they re-dial by themselves): %s", exc)
        return
    try:
        prober.send(addresses)
    finally:
        prober.close()
