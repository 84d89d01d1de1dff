"""Apply a planned interface state (WireGuard peers, addresses, routes, nft table)
with as little churn as possible; shared by gateway and connector."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
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


def guard_firewalld(
    interface: str, udp_ports: tuple[int, int] | None, stop: threading.Event
) -> threading.Thread | None:
    """On a host running firewalld, keep it letting our tunnel (and ports) through,
    also across ``firewall-cmd --reload`` and firewalld restarts; None without firewalld."""
    from zerogate.netops.firewalld import FirewalldIntegration

    fw = FirewalldIntegration(interface, udp_ports)
    if not fw.available():
        return None
    log.info("firewalld is running: keeping %s (and UDP %s) open through its D-Bus API", interface, udp_ports)
    thread = threading.Thread(target=fw.run_watch, args=(stop,), name="firewalld", daemon=True)
    thread.start()
    return thread


def serve(
    role: str,
    dp: Dataplane,
    lock: threading.RLock,
    follow: Callable[[threading.Event], None],
    loops: Sequence[Callable[[threading.Event], None]],
    stop: threading.Event,
    keep_on_exit: bool,
) -> None:
    """Run ``follow`` (the snapshot follower) with ``loops`` beside it in threads;
    on the way out stop them and, unless ``keep_on_exit``, remove tunnel and table."""
    dp.ensure_interface()
    threads = [threading.Thread(target=f, args=(stop,), name=f.__name__, daemon=True) for f in loops]
    for t in threads:
        t.start()
    try:
        follow(stop)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
        if not keep_on_exit:
            with lock:
                dp.teardown()
            log.info("%s stopped; tunnel %s and table inet zerogate removed", role, dp.interface)
