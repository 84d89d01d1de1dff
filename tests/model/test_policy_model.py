"""Validation and time-window semantics of the policy model."""

from __future__ import annotations

import datetime as dt
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.model.policy import (
    AppSpec,
    ClientDevice,
    Destination,
    PolicyInputs,
    PolicySpec,
    PortRange,
    TimeWindow,
    UserSpec,
)

UTC = dt.UTC
NET = IPv4Network("10.1.0.0/24")


# --- PortRange ---------------------------------------------------------------


def test_port_range_str_and_parse_round_trip() -> None:
    assert str(PortRange(80, 80)) == "80"
    assert str(PortRange(8000, 8080)) == "8000-8080"
    assert PortRange.parse("80") == PortRange(80, 80)
    assert PortRange.parse(" 8000 - 8080 ") == PortRange(8000, 8080)
    assert PortRange(22, 22) < PortRange(80, 80)


@pytest.mark.parametrize("text", ["", "http", "80-", "-80", "1-2-3", "+80", "80 90"])
def test_port_range_parse_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid port range"):
        PortRange.parse(text)


@pytest.mark.parametrize(("first", "last"), [(0, 10), (1, 65536), (-1, 5)])
def test_port_range_rejects_out_of_range(first: int, last: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        PortRange(first, last)


def test_port_range_rejects_reversed() -> None:
    with pytest.raises(ValueError, match="reversed; write 80-90"):
        PortRange(90, 80)
    with pytest.raises(ValueError, match="reversed"):
        PortRange.parse("9000-8000")


# --- Destination / AppSpec ------------------------------------------------------


def test_destination_icmp_and_any_have_no_ports() -> None:
    Destination(NET, "icmp")
    with pytest.raises(ValueError, match=r"icmp destination 10\.1\.0\.0/24 cannot have ports"):
        Destination(NET, "icmp", (PortRange(1, 1),))
    with pytest.raises(ValueError, match=r"any destination .* cannot have ports"):
        Destination(NET, "any", (PortRange(1, 1),))


def test_destination_rejects_unknown_protocol_and_bad_prefix() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'sctp'"):
        Destination(NET, "sctp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="IPv4Network or IPv6Network"):
        Destination("10.0.0.0/8", "tcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tuple of PortRange"):
        Destination(NET, "tcp", [PortRange(1, 2)])  # type: ignore[arg-type]


def test_app_validation() -> None:
    dest = Destination(IPv6Network("fd00::/64"), "tcp", (PortRange(443, 443),))
    assert AppSpec(1, "web", 2, (dest,)).destinations == (dest,)
    with pytest.raises(ValueError, match="at least one destination"):
        AppSpec(1, "web", 2, ())
    with pytest.raises(ValueError, match="application name must be a non-empty"):
        AppSpec(1, " ", 2, (dest,))
    with pytest.raises(ValueError, match="application id must be a non-negative"):
        AppSpec(-1, "web", 2, (dest,))
    with pytest.raises(ValueError, match="connector group id"):
        AppSpec(1, "web", True, (dest,))


def test_policy_user_device_validation() -> None:
    with pytest.raises(ValueError, match="group ids must be a frozenset"):
        PolicySpec(1, "p", {1}, frozenset())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy name"):
        PolicySpec(1, "", frozenset(), frozenset())
    with pytest.raises(ValueError, match="window must be a TimeWindow"):
        PolicySpec(1, "p", frozenset(), frozenset(), window="9-5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group id must be"):
        UserSpec(1, "alice", frozenset({-3}))
    with pytest.raises(ValueError, match="address must be an IPv4Address"):
        ClientDevice(1, 1, "100.64.0.2")  # type: ignore[arg-type]


def test_inputs_reject_duplicates() -> None:
    users = (UserSpec(1, "a", frozenset()), UserSpec(1, "b", frozenset()))
    with pytest.raises(ValueError, match="duplicate user id 1"):
        PolicyInputs(users, (), (), ())
    devices = (
        ClientDevice(1, 1, IPv4Address("100.64.0.2")),
        ClientDevice(2, 1, IPv4Address("100.64.0.2")),
    )
    with pytest.raises(ValueError, match=r"duplicate device address 100\.64\.0\.2"):
        PolicyInputs((), (), (), devices)
    with pytest.raises(ValueError, match="users must be a tuple of UserSpec"):
        PolicyInputs([], (), (), ())  # type: ignore[arg-type]


# --- TimeWindow ----------------------------------------------------------------


def test_window_validation() -> None:
    nine, five = dt.time(9), dt.time(17)
    with pytest.raises(ValueError, match="non-empty frozenset of days"):
        TimeWindow(frozenset(), nine, five)
    with pytest.raises(ValueError, match=r"0 \(Monday\) .. 6"):
        TimeWindow(frozenset({7}), nine, five)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        TimeWindow(frozenset({0}), nine, five, tz="Mars/Olympus")
    with pytest.raises(ValueError, match="naive time"):
        TimeWindow(frozenset({0}), dt.time(9, tzinfo=UTC), five)
    window = TimeWindow(frozenset({0}), nine, five)
    with pytest.raises(ValueError, match="no time zone"):
        window.contains(dt.datetime(2024, 1, 1, 10))


MONDAY = dt.datetime(2024, 1, 1, tzinfo=UTC)  # 2024-01-01 was a Monday


def test_office_hours_window() -> None:
    window = TimeWindow(frozenset(range(5)), dt.time(9), dt.time(17))
    assert window.contains(MONDAY.replace(hour=9))
    assert not window.contains(MONDAY.replace(hour=17))
    assert not window.contains(MONDAY.replace(hour=8, minute=59))
    assert not window.contains(MONDAY + dt.timedelta(days=5, hours=12))  # Saturday
    assert window.next_boundary(MONDAY) == MONDAY.replace(hour=9)
    assert window.next_boundary(MONDAY.replace(hour=9)) == MONDAY.replace(hour=17)
    friday_evening = MONDAY + dt.timedelta(days=4, hours=18)
    assert window.next_boundary(friday_evening) == MONDAY + dt.timedelta(days=7, hours=9)


def test_window_crossing_midnight_belongs_to_start_day() -> None:
    # Sunday 22:00 until Monday 02:00.
    window = TimeWindow(frozenset({6}), dt.time(22), dt.time(2))
    assert window.contains(MONDAY.replace(hour=1))
    assert not window.contains(MONDAY.replace(hour=23))
    assert window.next_boundary(MONDAY) == MONDAY.replace(hour=2)


def test_window_start_equals_end_is_whole_day_and_all_week_never_changes() -> None:
    window = TimeWindow(frozenset({0}), dt.time(0), dt.time(0))
    assert window.contains(MONDAY.replace(hour=23, minute=59))
    assert window.next_boundary(MONDAY) == MONDAY + dt.timedelta(days=1)
    always = TimeWindow(frozenset(range(7)), dt.time(0), dt.time(0))
    assert always.contains(MONDAY)
    assert always.next_boundary(MONDAY) is None


def test_window_uses_its_time_zone_and_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    window = TimeWindow(frozenset(range(7)), dt.time(9), dt.time(17), tz="Europe/Berlin")
    # Winter: 09:00 CET is 08:00 UTC; summer: 09:00 CEST is 07:00 UTC.
    assert window.contains(dt.datetime(2024, 1, 10, 8, tzinfo=UTC))
    assert not window.contains(dt.datetime(2024, 1, 10, 7, 30, tzinfo=UTC))
    assert window.contains(dt.datetime(2024, 7, 10, 7, 30, tzinfo=UTC))
    boundary = window.next_boundary(dt.datetime(2024, 7, 10, 0, tzinfo=berlin))
    assert boundary == dt.datetime(2024, 7, 10, 9, tzinfo=berlin)


@settings(max_examples=150, deadline=None)
@given(
    days=st.frozensets(st.integers(0, 6), min_size=1),
    start=st.times(),
    end=st.times(),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    at=st.datetimes(
        min_value=dt.datetime(2023, 1, 1), max_value=dt.datetime(2026, 1, 1), timezones=st.just(UTC)
    ),
    probe=st.floats(0.0, 1.0),
)
def test_next_boundary_is_first_change(
    days: frozenset[int], start: dt.time, end: dt.time, tz: str, at: dt.datetime, probe: float
) -> None:
    window = TimeWindow(days, start, end, tz)
    boundary = window.next_boundary(at)
    if boundary is None:
        assert window.contains(at)
        assert window.contains(at + dt.timedelta(days=3, seconds=probe * 1e5))
        return
    assert boundary > at
    assert window.contains(boundary) != window.contains(boundary - dt.timedelta(microseconds=1))
    # Nothing changes strictly between `at` and the boundary.
    inside = at + (boundary - at) * probe
    if inside < boundary:
        assert window.contains(inside) == window.contains(at)
