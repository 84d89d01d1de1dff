"""Segment learning and review: flows from connections, merging, proposals,
stale rules and simulation (pure; properties with hypothesis)."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.model.segment import Address, Connection, Flow, Group, Listener, Network, ProposedRule, Protocol
from zerogate.policy import segment

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOST4, HOST6 = ip_address("10.0.0.1"), ip_address("fd00::1")
LOCAL = (HOST4, HOST6, ip_address("127.0.0.1"))
LISTENERS = (
    Listener("tcp", None, 22, "sshd"),
    Listener("tcp", ip_address("0.0.0.0"), 80, "nginx"),
    Listener("tcp", HOST4, 80, "haproxy"),  # bound to the address: wins over 0.0.0.0
    Listener("udp", ip_address("::"), 53, "unbound"),
)


def conn(src: str, dst: str, dport: int, protocol: Protocol = "tcp") -> Connection:
    state = "ESTABLISHED" if protocol == "tcp" else None
    return Connection(protocol, ip_address(src), ip_address(dst), 40000, dport, state)


def flow(peer: str, port: int = 22, *, protocol: Protocol = "tcp", at: datetime = T0, count: int = 1) -> Flow:
    return Flow(protocol, port, ip_address(peer), "sshd", at, at, count)


# --------------------------------------------------------------------------- deriving flows


def test_inbound_connections_to_listeners_become_flows() -> None:
    connections = [
        conn("192.0.2.7", "10.0.0.1", 22),
        conn("192.0.2.7", "10.0.0.1", 80),
        conn("fd00::9", "fd00::1", 53, "udp"),
        conn("192.0.2.7", "10.0.0.1", 53, "udp"),  # the UDP socket is IPv6-only
        conn("192.0.2.7", "10.0.0.1", 8080),  # nothing listens
        conn("127.0.0.1", "127.0.0.1", 22),  # the host with itself
        conn("10.0.0.1", "10.0.0.1", 22),
        conn("192.0.2.7", "198.51.100.1", 22),  # not to this host (forwarded)
        conn("10.0.0.1", "192.0.2.8", 443),  # outbound
    ]
    flows = segment.derive_flows(connections, LISTENERS, LOCAL, at=T0)
    assert [(f.protocol, f.port, str(f.peer), f.process) for f in flows] == [
        ("tcp", 22, "192.0.2.7", "sshd"),
        ("tcp", 80, "192.0.2.7", "haproxy"),
        ("udp", 53, "fd00::9", "unbound"),
    ]
    assert all(f.first_seen == f.last_seen == T0 and f.direction == "inbound" for f in flows)


def test_outbound_flows_only_when_asked() -> None:
    connections = [conn("10.0.0.1", "192.0.2.8", 443), conn("10.0.0.1", "127.0.0.1", 5432)]
    assert segment.derive_flows(connections, LISTENERS, LOCAL, at=T0) == ()
    (out,) = segment.derive_flows(connections, LISTENERS, LOCAL, at=T0, outbound=True)
    assert (out.direction, out.port, str(out.peer), out.process) == ("outbound", 443, "192.0.2.8", None)


def test_timed_flows_keep_each_event_time() -> None:
    later = T0 + timedelta(minutes=5)
    flows = segment.derive_timed_flows(
        [(T0, conn("192.0.2.7", "10.0.0.1", 22)), (later, conn("192.0.2.7", "10.0.0.1", 22))],
        LISTENERS,
        LOCAL,
    )
    assert [f.first_seen for f in flows] == [T0, later]


# --------------------------------------------------------------------------- merging


def test_merge_folds_counts_and_times() -> None:
    old = [flow("192.0.2.7", count=3, at=T0)]
    new = [flow("192.0.2.7", at=T0 + timedelta(hours=1)), flow("192.0.2.7", at=T0 - timedelta(hours=1))]
    (merged,) = segment.merge(old, new).flows
    assert merged.count == 5
    assert merged.first_seen == T0 - timedelta(hours=1) and merged.last_seen == T0 + timedelta(hours=1)


def test_merge_keeps_known_flows_and_reports_what_the_bound_refused() -> None:
    old = [flow("192.0.2.1"), flow("192.0.2.2")]
    new = [flow("192.0.2.3"), flow("192.0.2.4"), flow("192.0.2.3"), flow("192.0.2.1")]
    result = segment.merge(old, new, limit=3)
    assert [str(f.peer) for f in result.flows] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert result.dropped == 1  # 192.0.2.4; the known 192.0.2.1 still counted
    assert result.flows[0].count == 2
    with pytest.raises(ValueError, match="at least 1"):
        segment.merge([], [], limit=0)


# --------------------------------------------------------------------------- proposals


def test_one_rule_per_service_with_evidence() -> None:
    flows = [
        flow("192.0.2.7", 22, at=T0, count=2),
        flow("198.51.100.9", 22, at=T0 + timedelta(days=1)),
        flow("192.0.2.7", 53, protocol="udp"),
        Flow("tcp", 443, ip_address("192.0.2.7"), None, T0, T0, direction="outbound"),
    ]
    proposal = segment.propose(flows, {}, max_rules=10)
    assert not proposal.over_cap and proposal.warning is None
    ssh, dns = proposal.rules
    assert (ssh.protocol, ssh.ports, dns.protocol, dns.ports) == ("tcp", "22", "udp", "53")
    assert ssh.sources == (ip_network("192.0.2.7/32"), ip_network("198.51.100.9/32"))
    assert ssh.evidence is not None
    assert (ssh.evidence.flows, ssh.evidence.connections, ssh.evidence.peers) == (2, 3, 2)
    assert (ssh.evidence.first_seen, ssh.evidence.last_seen) == (T0, T0 + timedelta(days=1))


def test_peers_collapse_into_the_tightest_known_group() -> None:
    groups = {
        "everyone": [ip_network("0.0.0.0/0")],
        "admins": [ip_network("192.0.2.0/28"), ip_network("198.51.100.0/30")],
        "servers": [ip_network("203.0.113.0/24")],
    }
    flows = [flow("192.0.2.3"), flow("198.51.100.2")]
    (rule,) = segment.propose(flows, groups, max_rules=5).rules
    assert rule.sources == (Group("admins", (ip_network("192.0.2.0/28"), ip_network("198.51.100.0/30"))),)


def test_peers_collapse_into_a_subnet_from_min_peers_on() -> None:
    flows = [flow(f"192.0.2.{i}") for i in (1, 2, 3, 4)] + [flow(f"198.51.100.{i}") for i in (1, 2, 3)]
    flows += [flow(f"fd00:1::{i}") for i in range(1, 5)]
    (rule,) = segment.propose(flows, {}, max_rules=5).rules
    assert rule.sources == (
        ip_network("192.0.2.0/24"),
        ip_network("198.51.100.1/32"),
        ip_network("198.51.100.2/32"),
        ip_network("198.51.100.3/32"),
        ip_network("fd00:1::/64"),
    )
    (tight,) = segment.propose(flows, {}, max_rules=5, min_peers=3).rules
    assert ip_network("198.51.100.0/24") in tight.sources


def test_too_many_rules_are_reported_not_dropped() -> None:
    flows = [flow("192.0.2.7", port) for port in range(1000, 1012)]
    proposal = segment.propose(flows, {}, max_rules=10)
    assert len(proposal.rules) == 12 and proposal.over_cap
    assert proposal.warning is not None and "12 rules" in proposal.warning and "cap of 10" in proposal.warning


def test_stale_rules_are_those_no_flow_used_since() -> None:
    recent, old = T0 + timedelta(days=30), T0
    rules = segment.propose(
        [flow("192.0.2.7", 22, at=recent), flow("192.0.2.7", 25, at=old)], {}, max_rules=5
    ).rules
    manual = ProposedRule("tcp", 3306, 3306, (ip_network("10.9.0.0/16"),))
    flows = [flow("192.0.2.7", 22, at=recent), flow("192.0.2.7", 25, at=old)]
    assert segment.stale([*rules, manual], flows, since=T0 + timedelta(days=7)) == (rules[1], manual)


# --------------------------------------------------------------------------- simulation


def test_a_flow_outside_the_rules_is_reported_blocked() -> None:
    learned = [flow("192.0.2.7", 22), flow("192.0.2.8", 22)]
    rules = segment.propose(learned, {}, max_rules=5).rules
    stranger = flow("203.0.113.5", 22)
    other_port = flow("192.0.2.7", 3389)
    result = segment.simulate([*learned, stranger, other_port], rules)
    assert [str(v.peer) for v in result.sources] == ["192.0.2.7", "192.0.2.8", "203.0.113.5"]
    first, second, third = result.sources
    assert first.blocked_flows == (other_port,) and first.allowed_flows == (learned[0],)
    assert second.allowed and not third.allowed and third.blocked_flows == (stranger,)
    assert result.blocked == (first, third)


# --------------------------------------------------------------------------- properties

_V4 = st.integers(
    min_value=int(IPv4Address("192.0.2.0")), max_value=int(IPv4Address("192.0.2.0")) + 1023
).map(IPv4Address)
_V6 = st.integers(min_value=0, max_value=2**70).map(lambda n: IPv6Address(int(IPv6Address("fd00::")) + n))
_PEERS: st.SearchStrategy[Address] = st.one_of(_V4, _V6)
_FLOWS = st.lists(
    st.builds(
        lambda proto, port, peer, minutes, count: Flow(
            proto, port, peer, "svc", T0, T0 + timedelta(minutes=minutes), count
        ),
        st.sampled_from(["tcp", "udp"]),
        st.sampled_from([22, 53, 80, 443, 5432]),
        _PEERS,
        st.integers(0, 10_000),
        st.integers(1, 50),
    ),
    min_size=1,
    max_size=60,
)
_GROUPS = st.dictionaries(
    st.sampled_from(["admins", "office", "dc", "v6"]),
    st.lists(
        st.sampled_from([ip_network("192.0.2.0/23"), ip_network("192.0.2.0/26"), ip_network("fd00::/56")]),
        min_size=1,
        max_size=2,
    ),
    max_size=3,
)


@given(_FLOWS, _GROUPS, st.integers(1, 6))
def test_proposals_cover_every_learned_flow_and_simulation_blocks_none(
    flows: list[Flow],
    groups: dict[str, list[Network]],
    min_peers: int,
) -> None:
    proposal = segment.propose(flows, groups, max_rules=3, min_peers=min_peers)
    for f in flows:
        assert sum(r.allows(f) for r in proposal.rules) == 1  # exactly one rule per service
    assert segment.simulate(flows, proposal.rules).blocks_nothing
    assert len(proposal.rules) == len({(f.protocol, f.port) for f in flows})
    assert proposal.over_cap == (len(proposal.rules) > 3)
    assert segment.stale(proposal.rules, flows, since=T0) == ()


@given(_FLOWS, st.randoms())
def test_outputs_do_not_depend_on_input_order(flows: list[Flow], rnd: random.Random) -> None:
    shuffled = flows[:]
    rnd.shuffle(shuffled)
    assert segment.propose(flows, {}, max_rules=9) == segment.propose(shuffled, {}, max_rules=9)
    assert segment.merge([], flows) == segment.merge([], shuffled)
    rules = segment.propose(flows[: len(flows) // 2], {}, max_rules=9).rules
    assert segment.simulate(flows, rules) == segment.simulate(shuffled, rules)


@given(_FLOWS, _PEERS)
def test_a_flow_outside_the_rules_is_blocked(flows: list[Flow], peer: Address) -> None:
    # with no groups and no subnet collapsing, the rules admit exactly the learned peers
    rules = segment.propose(flows, {}, max_rules=9, min_peers=10_000).rules
    learned = flows[0]
    probe = replace(learned, peer=peer)
    (verdict,) = segment.simulate([probe], rules).sources
    known = {f.peer for f in flows if (f.protocol, f.port) == (learned.protocol, learned.port)}
    assert verdict.allowed is (peer in known)
    unlearned_port = Flow(learned.protocol, 9999, learned.peer, None, T0, T0)
    assert not segment.simulate([unlearned_port], rules).sources[0].allowed
