"""Segment value objects: what they refuse at construction, listener matching,
rule matching and the asset mode transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.model.segment import (
    TRANSITIONS,
    AssetMode,
    Connection,
    Evidence,
    Flow,
    Group,
    Listener,
    ProposedRule,
    SegmentValueError,
    SimulationResult,
    SourceVerdict,
    check_transition,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
V4, V6 = ip_address("10.0.0.1"), ip_address("fd00::1")


@pytest.mark.parametrize("port", [0, 65536, -1, True, "80", 80.0])
def test_ports_outside_1_to_65535_are_refused(port: Any) -> None:
    with pytest.raises(SegmentValueError, match="port"):
        Listener("tcp", None, port)
    with pytest.raises(SegmentValueError, match="port"):
        Connection("tcp", V4, V4, 1000, port, "ESTABLISHED")
    with pytest.raises(SegmentValueError, match="port"):
        Flow("tcp", port, V4, None, T0, T0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocol": "icmp"},
        {"src": "10.0.0.2"},  # text is no address
        {"src": V6},  # families differ
        {"state": "EST ABLISHED"},
        {"state": "ESTABLISHED\n"},
    ],
)
def test_connection_validates_its_fields(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "protocol": "tcp",
        "src": ip_address("10.0.0.2"),
        "dst": V4,
        "sport": 40000,
        "dport": 22,
        "state": "ESTABLISHED",
    }
    with pytest.raises(SegmentValueError):
        Connection(**(fields | kwargs))


@pytest.mark.parametrize("name", ["", "x" * 65, "ssh\x1bd", "nginx\n", "a\u200bb", "bad\u202e"])
def test_process_names_are_short_and_visible(name: str) -> None:
    with pytest.raises(SegmentValueError, match="process name"):
        Listener("tcp", None, 22, name)
    with pytest.raises(SegmentValueError, match="process name"):
        Flow("tcp", 22, V4, name, T0, T0)


def test_process_names_may_hold_spaces_quotes_and_letters() -> None:
    assert Listener("tcp", None, 22, 'my "srv" é').process == 'my "srv" é'


def test_flow_times_are_aware_and_ordered_and_count_positive() -> None:
    with pytest.raises(SegmentValueError, match="timezone"):
        Flow("tcp", 22, V4, None, T0.replace(tzinfo=None), T0)
    with pytest.raises(SegmentValueError, match="before"):
        Flow("tcp", 22, V4, None, T0, T0 - timedelta(seconds=1))
    with pytest.raises(SegmentValueError, match="count"):
        Flow("tcp", 22, V4, None, T0, T0, count=0)
    with pytest.raises(SegmentValueError, match="direction"):
        Flow("tcp", 22, V4, None, T0, T0, direction="sideways")  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    flow = Flow("tcp", 22, V4, None, T0, T0)
    with pytest.raises(AttributeError):
        flow.count = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("bound", "to", "accepted"),
    [
        (None, "10.0.0.1", True),  # ss "*": both families
        (None, "fd00::1", True),
        ("0.0.0.0", "10.0.0.1", True),
        ("0.0.0.0", "fd00::1", False),
        ("::", "fd00::1", True),
        ("::", "10.0.0.1", False),  # ss "[::]": an IPv6-only socket
        ("10.0.0.1", "10.0.0.1", True),
        ("10.0.0.1", "10.0.0.2", False),
        ("::ffff:10.0.0.1", "10.0.0.1", True),
    ],
)
def test_listener_accepts_what_the_kernel_would_deliver(bound: str | None, to: str, accepted: bool) -> None:
    listener = Listener("tcp", None if bound is None else ip_address(bound), 443)
    assert listener.accepts("tcp", ip_address(to), 443) is accepted
    assert not listener.accepts("udp", ip_address(to), 443)
    assert not listener.accepts("tcp", ip_address(to), 444)


def test_rule_matches_port_range_and_sources() -> None:
    group = Group("office", (ip_network("192.0.2.0/24"),))
    rule = ProposedRule("tcp", 8000, 8010, (group, ip_network("fd00::/64")))
    assert rule.ports == "8000-8010"
    inside = Flow("tcp", 8005, ip_address("192.0.2.9"), None, T0, T0)
    assert rule.allows(inside)
    for outside in (
        Flow("tcp", 8011, ip_address("192.0.2.9"), None, T0, T0),
        Flow("udp", 8005, ip_address("192.0.2.9"), None, T0, T0),
        Flow("tcp", 8005, ip_address("198.51.100.1"), None, T0, T0),
        Flow("tcp", 8005, ip_address("192.0.2.9"), None, T0, T0, direction="outbound"),
    ):
        assert not rule.allows(outside)
    assert rule.allows(Flow("tcp", 8000, ip_address("fd00::5"), None, T0, T0))


def test_rules_and_groups_refuse_empty_or_reversed_parts() -> None:
    with pytest.raises(SegmentValueError, match="reversed"):
        ProposedRule("tcp", 10, 9, (ip_network("10.0.0.0/8"),))
    with pytest.raises(SegmentValueError, match="source"):
        ProposedRule("tcp", 10, 10, ())
    with pytest.raises(SegmentValueError, match="neither"):
        ProposedRule("tcp", 10, 10, ("10.0.0.0/8",))  # type: ignore[arg-type]
    with pytest.raises(SegmentValueError, match="no networks"):
        Group("empty", ())
    with pytest.raises(SegmentValueError, match="group name"):
        Group("bad\x00name", (ip_network("10.0.0.0/8"),))
    with pytest.raises(SegmentValueError, match="before"):
        Evidence(1, 1, 1, T0, T0 - timedelta(days=1))


def test_every_mode_can_leave_and_protection_needs_learning_first() -> None:
    assert set(TRANSITIONS) == set(AssetMode)
    check_transition(AssetMode.MONITORED, AssetMode.LEARNING)
    check_transition(AssetMode.LEARNING, AssetMode.PROTECTED)
    check_transition(AssetMode.PROTECTED, AssetMode.MONITORED)  # unprotect: one action
    with pytest.raises(SegmentValueError, match="cannot go to protected; it can go to: learning"):
        check_transition(AssetMode.MONITORED, AssetMode.PROTECTED)


@given(st.sampled_from(list(AssetMode)))
def test_every_mode_reaches_monitored_in_at_most_one_step(mode: AssetMode) -> None:
    assert mode is AssetMode.MONITORED or AssetMode.MONITORED in TRANSITIONS[mode]


def test_simulation_result_reports_blocked_sources() -> None:
    flow = Flow("tcp", 22, V4, None, T0, T0)
    ok = SourceVerdict(V4, (flow,), ())
    bad = SourceVerdict(V6, (), (Flow("tcp", 22, V6, None, T0, T0),))
    assert SimulationResult((ok,)).blocks_nothing
    result = SimulationResult((ok, bad))
    assert result.blocked == (bad,) and not bad.allowed and ok.allowed
