"""Value types of the data plane that the pure planners produce and the
adapters in :mod:`zerogate.netops` apply: a WireGuard peer and an nftables
table body. Pure: no I/O, no imports from the adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class WgPeer:
    """One ``[Peer]`` of a WireGuard interface as planned."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None
    keepalive: int | None = None


@dataclass(frozen=True, eq=False)
class TableBody:
    """A table body whose plain (non-interval) ``elements`` sets may change
    without a reload: ``skeleton`` is the body with those sets declared empty,
    ``text`` the whole body with their elements."""

    text: str
    skeleton: str = ""
    elements: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def fixed(cls, text: str) -> TableBody:
        return cls(text, text, {})
