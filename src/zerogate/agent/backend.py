"""What a daemon needs from its data plane: a small interface, so the reconcile
logic runs against the real WireGuard + nftables adapter
(:class:`zerogate.netops.dataplane.Dataplane`) and an in-memory fake alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from zerogate.model.dataplane import TableBody, WgPeer
from zerogate.netops.wireguard import PeerStatus


class DataplaneBackend(Protocol):
    """One tunnel interface with its peers, addresses, routes and nftables table."""

    @property
    def interface(self) -> str: ...

    @property
    def implementation(self) -> str:
        """The WireGuard implementation: "kernel" or "wireguard-go" (what reports show)."""
        ...

    @property
    def last_nft_mode(self) -> str:
        """How the last apply loaded the table: "full", "elements" or "" (unchanged)."""
        ...

    @property
    def last_nft_ms(self) -> float: ...

    def ensure_interface(self) -> str:
        """Create the interface when it is missing; return its implementation."""
        ...

    def apply(
        self,
        *,
        listen_port: int | None,
        peers: Sequence[WgPeer],
        addresses: Sequence[str],
        routes: Sequence[str],
        nft_body: str | TableBody | None,
    ) -> None:
        """Bring the interface to this state (only what changed); policy first."""
        ...

    def status(self) -> tuple[int, list[PeerStatus]]:
        """Listen port and the peers as WireGuard sees them; (0, []) without an interface."""
        ...

    def set_endpoint(self, public_key: str, endpoint: str) -> None:
        """Point one configured peer at ``endpoint`` (host:port)."""
        ...

    def redial(self, listen_port: int | None, peers: Sequence[WgPeer]) -> None:
        """Remove ``peers`` and add them back: fresh peers handshake at once."""
        ...

    def remove_interface(self) -> None:
        """Delete the interface (its routes go with it), leaving any table."""
        ...

    def teardown(self) -> None:
        """Remove the interface and the nftables table."""
        ...
