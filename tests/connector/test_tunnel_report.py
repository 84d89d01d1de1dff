"""What the connector says about its tunnel: the hint naming the gateway's UDP
port range, and handshake times in its report."""

from __future__ import annotations

from zerogate.connector.daemon import handshake_time, tunnel_hint
from zerogate.model.snapshot import GatewayEntry

KEY = "A" * 43 + "="


def gateway(**ports: int) -> GatewayEntry:
    return GatewayEntry(name="edge", endpoint="198.51.100.1", wg_public_key=KEY, tunnel_address=None, **ports)


def test_hint_names_the_endpoint_and_the_port_range() -> None:
    hint = tunnel_hint([gateway(port=51820, port_first=51820, port_last=51900)], "198.51.100.1:51820")
    assert "UDP to 198.51.100.1:51820" in hint and "port range is 51820-51900" in hint
    assert "egress firewall" in hint


def test_hint_from_an_older_controller_without_a_range() -> None:
    assert "port range is 51820)" in tunnel_hint([gateway(port=51820)], "198.51.100.1:51820")


def test_handshake_times() -> None:
    assert handshake_time(0) is None and handshake_time(0, iso=True) is None
    assert handshake_time(1700000000, iso=True) == "2023-11-14T22:13:20+00:00"
    assert handshake_time(1700000000) == "22:13:20 UTC"
