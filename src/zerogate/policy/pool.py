"""Client virtual address pool (carrier-grade NAT space by default).

A client gets its address from the first pool block that does not collide with
a network the client device already has; the other blocks are alternates for
exactly that case, not overflow capacity. Inside a block the lowest free host
address is used. The network and broadcast addresses and the block's first
host (the gateway's own tunnel address, :func:`gateway_address`) are never
handed out.

The pool is stateless: callers pass the addresses already taken, so the store
remains the single source of truth.

Errors (all :class:`PoolError`, a :class:`ValueError`):

* :class:`PoolExhausted` -- the chosen block has no free address left.
* :class:`NoUsableBlock` -- every block collides with the client's networks.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from itertools import chain

__all__ = [
    "DEFAULT_BLOCKS",
    "AddressPool",
    "NoUsableBlock",
    "PoolError",
    "PoolExhausted",
    "gateway_address",
]

DEFAULT_BLOCKS: tuple[IPv4Network, ...] = tuple(
    IPv4Network(f"100.{second}.0.0/16") for second in range(64, 84)
)


class PoolError(ValueError):
    """No address can be allocated."""


class PoolExhausted(PoolError):
    def __init__(self, block: IPv4Network) -> None:
        self.block = block
        super().__init__(
            f"address block {block} is full: release addresses of removed devices or configure a larger block"
        )


class NoUsableBlock(PoolError):
    def __init__(self, blocks: tuple[IPv4Network, ...], avoid: tuple[IPv4Network, ...]) -> None:
        self.blocks = blocks
        self.avoid = avoid
        nets = ", ".join(str(n) for n in avoid)
        super().__init__(
            f"every address block ({', '.join(str(b) for b in blocks)}) overlaps a network "
            f"the client already has ({nets}); add a pool block outside those networks"
        )


def gateway_address(block: IPv4Network) -> IPv4Address:
    """The block's first host, reserved for the gateway's tunnel address."""
    return block.network_address + 1


@dataclass(frozen=True, slots=True)
class AddressPool:
    blocks: tuple[IPv4Network, ...] = DEFAULT_BLOCKS
    reserved: frozenset[IPv4Address] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise ValueError("address pool needs a non-empty tuple of blocks")
        for block in self.blocks:
            if not isinstance(block, IPv4Network):
                raise ValueError(f"address pool block {block!r} is not an IPv4 network")
            if block.prefixlen > 30:
                raise ValueError(
                    f"address pool block {block} is too small: it needs a prefix of /30 "
                    "or shorter (network, gateway, one client, broadcast)"
                )
        for i, block in enumerate(self.blocks):
            for other in self.blocks[i + 1 :]:
                if block.overlaps(other):
                    raise ValueError(f"address pool blocks {block} and {other} overlap")
        for address in self.reserved:
            if not isinstance(address, IPv4Address):
                raise ValueError(f"reserved address {address!r} is not an IPv4 address")

    gateway_address = staticmethod(gateway_address)

    def block_of(self, address: IPv4Address | IPv6Address) -> IPv4Network | None:
        """The pool block containing ``address``, if any."""
        if not isinstance(address, IPv4Address):
            return None
        return next((b for b in self.blocks if address in b), None)

    def usable_block(self, avoid: Iterable[IPv4Network | IPv6Network] = ()) -> IPv4Network:
        """The first block overlapping none of ``avoid`` (IPv6 never collides)."""
        avoid4 = tuple(n for n in avoid if isinstance(n, IPv4Network))
        for block in self.blocks:
            if not any(block.overlaps(net) for net in avoid4):
                return block
        raise NoUsableBlock(self.blocks, avoid4)

    def allocate(
        self,
        taken: Set[IPv4Address],
        avoid: Iterable[IPv4Network | IPv6Network] = (),
    ) -> IPv4Address:
        """The lowest free client address in the first block not colliding with ``avoid``."""
        block = self.usable_block(avoid)
        low = int(block.network_address) + 2  # skip network and gateway addresses
        high = int(block.broadcast_address) - 1
        used = {
            int(a)
            for a in chain(taken, self.reserved)
            if isinstance(a, IPv4Address) and low <= int(a) <= high
        }
        for candidate in range(low, high + 1):
            if candidate not in used:
                return IPv4Address(candidate)
        raise PoolExhausted(block)
