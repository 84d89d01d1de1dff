"""What the connector says about its tunnel: the hint naming the gateway's UDP
port range, and handshake times in its report."""

from __future__ import annotations

from zerogate.connector.daemon import handshake_time, tunnel_hint


def test_hint_names_the_endpoint_and_the_port_range() -> None:
    snapshot = {"gateways": [{"port": 51820, "port_first": 51820, "port_last": 51900}]}
    hint = tunnel_hint(snapshot, "198.51.100.1:51820")
    assert "UDP to 198.51.100.1:51820" in hint and "port range is 51820-51900" in hint
    assert "egress firewall" in hint


def test_hint_from_an_older_controller_without_a_range() -> None:
    assert "port range is 51820)" in tunnel_hint({"gateways": [{"port": 51820}]}, "198.51.100.1:51820")


def test_handshake_times() -> None:
    assert handshake_time(0) is None and handshake_time(0, iso=True) is None
    assert handshake_time(1700000000, iso=True) == "2023-11-14T22:13:20+00:00"
    assert handshake_time(1700000000) == "22:13:20 UTC"
