"""Client address pool: conflict-aware block choice and lowest-free allocation."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.policy.pool import (
    DEFAULT_BLOCKS,
    AddressPool,
    NoUsableBlock,
    PoolError,
    PoolExhausted,
    gateway_address,
)


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def test_default_blocks() -> None:
    assert len(DEFAULT_BLOCKS) == 20
    assert DEFAULT_BLOCKS[0] == IPv4Network("100.64.0.0/16")
    assert DEFAULT_BLOCKS[-1] == IPv4Network("100.83.0.0/16")


def test_first_client_gets_second_host_gateway_gets_first() -> None:
    pool = AddressPool()
    assert pool.allocate(set()) == ip("100.64.0.2")
    assert gateway_address(DEFAULT_BLOCKS[0]) == ip("100.64.0.1")
    assert pool.gateway_address(DEFAULT_BLOCKS[1]) == ip("100.65.0.1")


def test_lowest_free_skips_taken_and_reserved() -> None:
    pool = AddressPool(reserved=frozenset({ip("100.64.0.3")}))
    taken = {ip("100.64.0.2"), ip("100.64.0.4"), ip("100.65.0.2")}
    assert pool.allocate(taken) == ip("100.64.0.5")
    assert pool.allocate(taken - {ip("100.64.0.2")}) == ip("100.64.0.2")


def test_collision_moves_to_next_block_ipv6_never_collides() -> None:
    pool = AddressPool()
    home = [IPv4Network("100.64.10.0/24"), IPv6Network("fd00::/8")]
    assert pool.allocate(set(), avoid=home) == ip("100.65.0.2")
    cgnat = [IPv4Network("100.64.0.0/15"), IPv4Network("100.66.0.0/16")]
    assert pool.allocate(set(), avoid=cgnat) == ip("100.67.0.2")
    assert pool.allocate(set(), avoid=[IPv6Network("::/0")]) == ip("100.64.0.2")


def test_no_usable_block_names_the_networks() -> None:
    with pytest.raises(NoUsableBlock, match=r"100\.64\.0\.0/10") as info:
        AddressPool().allocate(set(), avoid=[IPv4Network("100.64.0.0/10")])
    assert isinstance(info.value, PoolError) and isinstance(info.value, ValueError)


def test_full_block_raises_exhausted_naming_it() -> None:
    block = IPv4Network("10.9.0.0/30")
    pool = AddressPool((block, IPv4Network("10.9.1.0/24")))
    assert pool.allocate(set()) == ip("10.9.0.2")
    with pytest.raises(PoolExhausted, match=r"address block 10\.9\.0\.0/30 is full") as info:
        pool.allocate({ip("10.9.0.2")})
    assert info.value.block == block


def test_block_of() -> None:
    pool = AddressPool()
    assert pool.block_of(ip("100.70.3.4")) == IPv4Network("100.70.0.0/16")
    assert pool.block_of(ip("10.0.0.1")) is None


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ((), "non-empty tuple"),
        ((IPv4Network("10.0.0.0/31"),), "too small"),
        ((IPv6Network("fd00::/64"),), "not an IPv4 network"),
        ((IPv4Network("10.0.0.0/16"), IPv4Network("10.0.3.0/24")), "overlap"),
    ],
)
def test_pool_validation(blocks: tuple[IPv4Network, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AddressPool(blocks)


def test_reserved_must_be_ipv4() -> None:
    with pytest.raises(ValueError, match="reserved address"):
        AddressPool(reserved=frozenset({"100.64.0.9"}))  # type: ignore[arg-type]


# --- property: allocations and releases -------------------------------------

SMALL_BLOCKS = (
    IPv4Network("10.0.0.0/29"),
    IPv4Network("10.0.0.8/29"),
    IPv4Network("10.0.1.0/28"),
)
AVOIDABLE = [
    IPv4Network("10.0.0.0/29"),
    IPv4Network("10.0.0.0/28"),
    IPv4Network("10.0.0.12/30"),
    IPv4Network("10.0.1.8/32"),
    IPv4Network("10.0.0.0/16"),
    IPv6Network("fd00::/8"),
]
ALL_HOSTS = [ip(f"10.0.0.{n}") for n in range(16)] + [ip(f"10.0.1.{n}") for n in range(16)]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.lists(st.sampled_from(AVOIDABLE), max_size=2)),
        st.tuples(st.just("release"), st.integers(0, 100)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=operations, reserved=st.frozensets(st.sampled_from(ALL_HOSTS), max_size=4))
def test_allocations_are_unique_and_legal(
    ops: list[tuple[str, object]], reserved: frozenset[IPv4Address]
) -> None:
    pool = AddressPool(SMALL_BLOCKS, reserved)
    taken: list[IPv4Address] = []
    for op, arg in ops:
        if op == "release":
            if taken:
                taken.pop(int(arg) % len(taken))  # type: ignore[call-overload]
            continue
        avoid = arg
        assert isinstance(avoid, list)
        usable = [b for b in SMALL_BLOCKS if not any(b.overlaps(n) for n in avoid)]
        try:
            address = pool.allocate(set(taken), avoid=avoid)
        except NoUsableBlock:
            assert not usable
            continue
        except PoolExhausted as exc:
            assert exc.block == usable[0]
            legal = set(exc.block.hosts()) - {gateway_address(exc.block)} - reserved
            assert legal <= set(taken)
            continue
        block = pool.block_of(address)
        assert block == usable[0]
        assert address not in taken
        assert address not in reserved
        assert address not in (block.network_address, block.broadcast_address)
        assert address != gateway_address(block)
        assert not any(address in n for n in avoid if isinstance(n, IPv4Network))
        # Lowest free: every lower legal host of the block is already in use.
        lower = {h for h in block.hosts() if h < address} - {gateway_address(block)} - reserved
        assert lower <= set(taken)
        taken.append(address)


@pytest.mark.parametrize("prefix", [30, 29, 28])
def test_small_block_fills_then_exhausts(prefix: int) -> None:
    block = IPv4Network(f"192.0.2.0/{prefix}")
    pool = AddressPool((block,), reserved=frozenset({ip("192.0.2.3")}))
    taken: set[IPv4Address] = set()
    expected = block.num_addresses - 3 - (1 if prefix < 30 else 0)
    for _ in range(expected):
        taken.add(pool.allocate(taken))
    assert len(taken) == expected
    with pytest.raises(PoolExhausted):
        pool.allocate(taken)
