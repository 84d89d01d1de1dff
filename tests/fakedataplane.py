"""An in-memory data plane backend (:class:`zerogate.agent.backend.DataplaneBackend`)
for the daemons' reconcile tests: it records what the daemon asked for and
plays back peer status the test sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from zerogate.model.dataplane import TableBody, WgPeer
from zerogate.netops.wireguard import PeerStatus


@dataclass
class FakeDataplane:
    interface: str = "zg-test"
    implementation: str = "fake"
    last_nft_mode: str = ""
    last_nft_ms: float = 0.0
    exists: bool = False
    listen_port: int | None = None
    peers: tuple[WgPeer, ...] = ()
    addresses: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    nft: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    peer_status: list[PeerStatus] = field(default_factory=list)  # what status() reports
    applies: int = 0
    redials: list[tuple[str, ...]] = field(default_factory=list)
    teardowns: int = 0
    fail_apply: str | None = None  # raise RuntimeError(fail_apply) from apply()

    def ensure_interface(self) -> str:
        self.exists = True
        return self.implementation

    def apply(
        self,
        *,
        listen_port: int | None,
        peers: Sequence[WgPeer],
        addresses: Sequence[str],
        routes: Sequence[str],
        nft_body: str | TableBody | None,
    ) -> None:
        if self.fail_apply:
            raise RuntimeError(self.fail_apply)
        self.ensure_interface()
        self.applies += 1
        if nft_body is not None:
            text = nft_body.text if isinstance(nft_body, TableBody) else nft_body
            self.last_nft_mode = "full" if text != self.nft else ""
            self.nft = text
        self.listen_port, self.peers = listen_port, tuple(peers)
        self.addresses, self.routes = tuple(addresses), tuple(routes)

    def status(self) -> tuple[int, list[PeerStatus]]:
        if not self.exists:
            return 0, []
        return self.listen_port or 0, list(self.peer_status)

    def set_endpoint(self, public_key: str, endpoint: str) -> None:
        if public_key not in {p.public_key for p in self.peers}:
            raise ValueError(f"no peer {public_key}")
        self.endpoints[public_key] = endpoint

    def redial(self, listen_port: int | None, peers: Sequence[WgPeer]) -> None:
        self.redials.append(tuple(p.public_key for p in peers))

    def remove_interface(self) -> None:
        self.exists = False
        self.peers = ()

    def teardown(self) -> None:
        self.teardowns += 1
        self.exists, self.peers, self.nft, self.endpoints = False, (), None, {}

    def allowed(self, public_key: str) -> tuple[str, ...]:
        """The allowed IPs the daemon gave one peer."""
        return next(p.allowed_ips for p in self.peers if p.public_key == public_key)
