"""Online/offline and attention (controller/health.py), as pure functions of the stored state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zerogate.controller.health import component_health
from zerogate.controller.reports import StoredReport

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def report(age: float, **details: Any) -> StoredReport:
    peers = details.pop("peers", [])
    return StoredReport.model_validate(
        {
            "version": "0.1.0",
            "interface": "zg",
            "peers": peers,
            "details": details,
            "at": NOW - timedelta(seconds=age),
        }
    )


def test_a_daemon_is_offline_after_three_of_its_own_report_intervals() -> None:
    assert component_health("connector", NOW, report(14.9), None, NOW).online  # default interval 5 s
    late = component_health("connector", NOW, report(15.1), None, NOW)
    assert not late.online and late.attention == ("offline: nothing heard for 15 s (expected every 5 s)",)
    assert component_health("gateway", NOW, report(1.4, report_interval=0.5), None, NOW).online
    assert not component_health("gateway", NOW, report(1.6, report_interval=0.5), None, NOW).online
    # a snapshot long-poll does not make a silent daemon online: its reports decide
    assert not component_health("connector", NOW, report(100), None, NOW).online


def test_never_reported_and_unreadable_reports_need_attention() -> None:
    never = component_health("connector", None, None, None, NOW)
    assert not never.online and never.age_seconds is None and "never reported" in never.attention[0]
    broken = component_health("gateway", NOW, None, "the stored report is unreadable", NOW)
    assert not broken.online and broken.attention[0] == "the stored report is unreadable"


def test_what_an_online_report_flags() -> None:
    down = component_health("connector", NOW, report(1, tunnel_up=False, tunnel_hint="check UDP"), None, NOW)
    assert down.online and down.attention == ("tunnel down: check UDP",)
    peers = [
        {"role": "connector", "public_key": "a" * 43 + "=", "name": "cn1", "up": True},
        {"role": "connector", "public_key": "b" * 43 + "=", "name": "cn2", "up": False},
        {"role": "client", "public_key": "c" * 43 + "="},
    ]
    gw = component_health("gateway", NOW, report(1, controller_connected=False, peers=peers), None, NOW)
    assert gw.attention == (
        "not connected to the controller (serving its last snapshot)",
        "connectors not answering probes: cn2",
    )
    assert component_health("connector", NOW, report(1, tunnel_up=True), None, NOW).attention == ()


def test_clients_and_segment_servers_go_by_their_last_sign_of_life() -> None:
    assert component_health("client", NOW - timedelta(seconds=89), None, None, NOW).online
    assert not component_health("client", NOW - timedelta(seconds=91), None, None, NOW).online
    assert not component_health("segment", None, None, None, NOW).online
