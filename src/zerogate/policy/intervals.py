"""Turn overlapping (address range x port range) rules into disjoint set elements.

nftables interval sets refuse overlapping elements ("File exists"), but policy
rules overlap all the time (an app on 10.1.0.0/24 and another on 10.1.0.5).
This sweep cuts the address axis at every rule boundary, unions the port
ranges over each piece, and merges neighbouring pieces that ended up with the
same ports. The result matches exactly the same (address, port) pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

PortRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Element:
    """Addresses first..last (inclusive, as integers) with these port ranges."""

    first: int
    last: int
    ports: PortRanges

    def address_text(self) -> str:
        a, b = IPv4Address(self.first), IPv4Address(self.last)
        return str(a) if a == b else f"{a}-{b}"


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> PortRanges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def disjoint(rules: Sequence[tuple[IPv4Network, int, int]]) -> list[Element]:
    """Disjoint elements covering exactly the union of (network, first..last port) rules."""
    if not rules:
        return []
    cuts: set[int] = set()
    spans = []
    for net, lo, hi in rules:
        a, b = int(net.network_address), int(net.broadcast_address)
        spans.append((a, b, lo, hi))
        cuts.add(a)
        cuts.add(b + 1)
    points = sorted(cuts)
    pieces: list[Element] = []
    for start, stop in itertools.pairwise(points):
        ports = merge_ranges((lo, hi) for a, b, lo, hi in spans if a <= start and stop - 1 <= b)
        if not ports:
            continue
        if pieces and pieces[-1].last + 1 == start and pieces[-1].ports == ports:
            pieces[-1] = Element(pieces[-1].first, stop - 1, ports)
        else:
            pieces.append(Element(start, stop - 1, ports))
    return pieces
