"""``intervals.disjoint``: overlapping (network x port range) rules become
disjoint, sorted nftables set elements that match exactly the same pairs.

The property test compares against the rules themselves: membership only
changes at a rule (or element) boundary, so checking every boundary address
against every boundary port is a complete check, not a sample.
"""

from __future__ import annotations

import itertools
import random
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.policy.intervals import Element, disjoint, merge_ranges

Rule = tuple[IPv4Network, int, int]
TOP = 2**32 - 1


def matched_by_rules(rules: list[Rule], addr: int, port: int) -> bool:
    return any(
        int(n.network_address) <= addr <= int(n.broadcast_address) and lo <= port <= hi for n, lo, hi in rules
    )


def matched_by_elements(elements: list[Element], addr: int, port: int) -> bool:
    return any(e.first <= addr <= e.last and any(lo <= port <= hi for lo, hi in e.ports) for e in elements)


def boundaries(rules: list[Rule], elements: list[Element]) -> tuple[set[int], set[int]]:
    addrs: set[int] = {0, TOP}
    ports: set[int] = {0, 65535}
    for n, lo, hi in rules:
        a, b = int(n.network_address), int(n.broadcast_address)
        addrs |= {a - 1, a, b, b + 1}
        ports |= {lo - 1, lo, hi, hi + 1}
    for e in elements:
        addrs |= {e.first - 1, e.first, e.last, e.last + 1}
        for lo, hi in e.ports:
            ports |= {lo - 1, lo, hi, hi + 1}
    return {a for a in addrs if 0 <= a <= TOP}, {p for p in ports if 0 <= p <= 65535}


def assert_well_formed(elements: list[Element]) -> None:
    for e in elements:
        assert 0 <= e.first <= e.last <= TOP
        assert e.ports, f"element {e} matches no port"
        for lo, hi in e.ports:
            assert 0 <= lo <= hi <= 65535
        for (_, hi1), (lo2, _) in itertools.pairwise(e.ports):
            assert lo2 > hi1 + 1, f"port ranges of {e} overlap or touch: they should be one range"
    for left, right in itertools.pairwise(elements):
        assert left.last < right.first, f"{left} and {right} overlap or are out of order"
        if left.last + 1 == right.first:
            assert left.ports != right.ports, f"{left} and {right} touch with equal ports: not merged"


# Networks inside 10.0.0.0/23 (so rules overlap a lot), sometimes a wider one.
_narrow = st.builds(
    lambda host, prefix: IPv4Network((0x0A000000 + host, prefix), strict=False),
    st.integers(0, 511),
    st.integers(23, 32),
)
_wide = st.sampled_from(
    [
        IPv4Network("10.0.0.0/8"),
        IPv4Network("0.0.0.0/0"),
        IPv4Network("10.0.1.0/24"),
        IPv4Network("9.255.255.255/32"),
    ]
)
_ports = st.one_of(
    st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda t: (min(t), max(t))),
    st.sampled_from([(0, 65535), (80, 80), (443, 443), (1024, 65535), (65535, 65535)]),
)
_rule = st.builds(lambda n, p: (n, p[0], p[1]), st.one_of(_narrow, _narrow, _narrow, _wide), _ports)


@settings(max_examples=300, deadline=None)
@given(st.lists(_rule, max_size=8))
def test_disjoint_matches_exactly_the_pairs_the_rules_match(rules: list[Rule]) -> None:
    elements = disjoint(rules)
    assert_well_formed(elements)
    addrs, ports = boundaries(rules, elements)
    for addr in addrs:
        for port in ports:
            want = matched_by_rules(rules, addr, port)
            got = matched_by_elements(elements, addr, port)
            assert got == want, f"{IPv4Address(addr)}:{port}: rules say {want}, elements say {got}"


@settings(max_examples=100, deadline=None)
@given(st.lists(_rule, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_disjoint_does_not_depend_on_rule_order(rules: list[Rule], rnd: random.Random) -> None:
    shuffled = list(rules)
    rnd.shuffle(shuffled)
    assert disjoint(shuffled) == disjoint(rules)
    assert disjoint(rules + rules) == disjoint(rules)


def test_no_rules_no_elements() -> None:
    assert disjoint([]) == []


def test_the_whole_address_space_and_all_ports_is_one_element() -> None:
    whole = disjoint([(IPv4Network("0.0.0.0/0"), 0, 65535)])
    assert whole == [Element(0, TOP, ((0, 65535),))]
    assert whole[0].address_text() == "0.0.0.0-255.255.255.255"


def test_a_host_route_is_written_as_one_address() -> None:
    [e] = disjoint([(IPv4Network("10.1.0.5/32"), 22, 22)])
    assert (e.address_text(), e.ports) == ("10.1.0.5", ((22, 22),))
    [top] = disjoint([(IPv4Network("255.255.255.255/32"), 0, 0)])
    assert (top.first, top.last, top.address_text()) == (TOP, TOP, "255.255.255.255")


def test_a_host_inside_a_subnet_splits_it_into_three_pieces() -> None:
    out = disjoint([(IPv4Network("10.1.0.0/24"), 80, 80), (IPv4Network("10.1.0.5/32"), 22, 22)])
    assert [(e.address_text(), e.ports) for e in out] == [
        ("10.1.0.0-10.1.0.4", ((80, 80),)),
        ("10.1.0.5", ((22, 22), (80, 80))),
        ("10.1.0.6-10.1.0.255", ((80, 80),)),
    ]


def test_neighbouring_networks_with_equal_ports_merge_and_different_ports_do_not() -> None:
    halves = [(IPv4Network("10.0.0.0/25"), 443, 443), (IPv4Network("10.0.0.128/25"), 443, 443)]
    assert [e.address_text() for e in disjoint(halves)] == ["10.0.0.0-10.0.0.255"]
    apart = [(IPv4Network("10.0.0.0/25"), 443, 443), (IPv4Network("10.0.0.128/25"), 80, 80)]
    assert [e.address_text() for e in disjoint(apart)] == ["10.0.0.0-10.0.0.127", "10.0.0.128-10.0.0.255"]


def test_touching_and_overlapping_port_ranges_merge() -> None:
    assert merge_ranges([(6, 10), (1, 5), (20, 30), (25, 26)]) == ((1, 10), (20, 30))
    assert merge_ranges([(0, 65535), (80, 80)]) == ((0, 65535),)
    assert merge_ranges([(1, 1), (3, 3)]) == ((1, 1), (3, 3))
    [e] = disjoint([(IPv4Network("10.0.0.0/24"), 0, 1023), (IPv4Network("10.0.0.0/24"), 1024, 65535)])
    assert e.ports == ((0, 65535),)
