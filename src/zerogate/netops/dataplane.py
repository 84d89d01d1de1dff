"""The real data plane backend (see :class:`zerogate.agent.backend.DataplaneBackend`):
apply a planned interface state (WireGuard peers, addresses, routes, nft table)
with as little churn as possible; shared by gateway, connector and client."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from zerogate.model.dataplane import TableBody, WgPeer
from zerogate.netops import links, nftables
from zerogate.netops.command import CommandError
from zerogate.netops.wireguard import PeerStatus, WgInterface

log = logging.getLogger(__name__)


@dataclass
class Dataplane:
    interface: str
    private_key: str
    wg: WgInterface = field(init=False)
    _peers: tuple[WgPeer, ...] | None = None
    _listen: int | None = None
    _nft: TableBody | None = None
    _addresses: tuple[str, ...] | None = None
    _routes: tuple[str, ...] | None = None
    last_nft_ms: float = 0.0
    last_nft_mode: str = ""

    def __post_init__(self) -> None:
        self.wg = WgInterface(self.interface)

    def ensure_interface(self) -> str:
        if not self.wg.exists():
            impl = self.wg.create()
            log.info("created WireGuard interface %s (%s)", self.interface, impl)
            self._peers = self._addresses = self._routes = None
            self._listen = None
        return self.wg.implementation

    def apply(
        self,
        *,
        listen_port: int | None,
        peers: Sequence[WgPeer],
        addresses: Sequence[str],
        routes: Sequence[str],
        nft_body: str | TableBody | None,
    ) -> None:
        """Policy first (atomic; a failure changes nothing), then peers, addresses, routes."""
        self.ensure_interface()
        self.last_nft_mode, self.last_nft_ms = "", 0.0
        if nft_body is not None:
            table = nft_body if isinstance(nft_body, TableBody) else TableBody.fixed(nft_body)
            if self._nft is None or table.text != self._nft.text:
                self._apply_table(table)
        peers_t = tuple(peers)
        if peers_t != self._peers or listen_port != self._listen:
            self.wg.sync(self.private_key, listen_port, peers_t)
            self._peers, self._listen = peers_t, listen_port
        if tuple(addresses) != self._addresses:
            links.ensure_addresses(self.interface, addresses)
            self._addresses = tuple(addresses)
        if tuple(routes) != self._routes:
            links.ensure_routes(self.interface, routes)
            self._routes = tuple(routes)

    def _apply_table(self, table: TableBody) -> None:
        """Only the changed set elements when nothing else changed, else the whole
        table; both are one transaction. A refused diff (someone edited our table)
        falls back to the whole table, which puts everything back as planned."""
        started = time.perf_counter()
        script = nftables.update_script("inet", nftables.TABLE, self._nft, table)
        if script:
            try:
                nftables.apply(script)
            except CommandError as exc:
                log.warning("element update refused (%s); loading the whole table", exc.stderr.strip()[:200])
                script = None
        if script is None:
            nftables.apply(nftables.replace_table_script("inet", nftables.TABLE, table.text))
        self.last_nft_ms = (time.perf_counter() - started) * 1000
        self.last_nft_mode = "full" if script is None else "elements"
        self._nft = table

    @property
    def implementation(self) -> str:
        return self.wg.implementation

    def set_endpoint(self, public_key: str, endpoint: str) -> None:
        self.wg.set_endpoint(public_key, endpoint)

    def redial(self, listen_port: int | None, peers: Sequence[WgPeer]) -> None:
        """Drop ``peers`` and add them back: a fresh peer has no session, so WireGuard
        handshakes at once instead of sending on one the other side may have lost."""
        for peer in peers:
            self.wg.remove_peer(peer.public_key)
        self.wg.sync(self.private_key, listen_port, tuple(peers))

    def remove_interface(self) -> None:
        self.wg.delete()
        self._peers = self._addresses = self._routes = None

    def status(self) -> tuple[int, list[PeerStatus]]:
        if not self.wg.exists():
            return 0, []
        return self.wg.status()

    def teardown(self) -> None:
        try:
            nftables.delete_table("inet", nftables.TABLE)
        finally:
            self.wg.delete()
        self._peers = self._addresses = self._routes = None
        self._nft = None
