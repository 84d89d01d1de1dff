"""The client's plan: a split tunnel that routes only what the user may reach."""

from __future__ import annotations

from typing import Any

from zerogate.client.plan import KEEPALIVE_SECONDS, plan_client
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ClientSnapshot, parse_snapshot

GW_KEY = "A" * 43 + "="


def wire(**overrides: Any) -> dict[str, Any]:
    """The client snapshot as the controller sends it (JSON, parsed)."""
    snap: dict[str, Any] = {
        "schema_version": "1.0",
        "revision": 3,
        "role": "client",
        "device_id": 30,
        "name": "laptop",
        "address": "100.64.0.2",
        "session_expires_at": None,
        "routes": ["10.1.0.5/32", "10.1.0.0/24", "10.1.0.5", "192.168.10.0/23"],
        "applications": ["ssh", "web"],
        "gateways": [
            {
                "name": "gw-a",
                "endpoint": "gw.example.test",
                "port": 51820,
                "wg_public_key": GW_KEY,
                "tunnel_address": "100.64.0.1",
            },
            {
                "name": "gw-b",
                "endpoint": "198.51.100.9",
                "port": 51820,
                "wg_public_key": "B" * 43 + "=",
                "tunnel_address": "100.64.0.1",
            },
        ],
    }
    return snap | overrides


def snapshot(**overrides: Any) -> ClientSnapshot:
    return parse_snapshot("client", wire(**overrides))


def test_routes_are_the_allowed_destinations_plus_the_gateway_tunnel_address() -> None:
    plan = plan_client(snapshot())
    assert plan.routes == ("10.1.0.0/24", "10.1.0.5/32", "100.64.0.1/32", "192.168.10.0/23")
    assert plan.address == "100.64.0.2/32"
    # no default route and nothing else of the internet goes into the tunnel
    assert "0.0.0.0/0" not in plan.routes


def test_the_one_peer_is_the_first_gateway_and_carries_exactly_the_routes() -> None:
    plan = plan_client(snapshot())
    assert (plan.gateway, plan.endpoint) == ("gw-a", "gw.example.test:51820")
    [peer] = plan.peers
    assert peer == WgPeer(GW_KEY, peer.allowed_ips, "gw.example.test:51820", KEEPALIVE_SECONDS)
    assert sorted(peer.allowed_ips) == sorted(plan.routes)


def test_endpoints_format_ipv4_hostnames_and_ipv6_in_brackets() -> None:
    def endpoint(host: str, port: int) -> str | None:
        gw = dict(wire()["gateways"][0], endpoint=host, port=port)
        return plan_client(snapshot(gateways=[gw])).endpoint

    assert endpoint("198.51.100.9", 51999) == "198.51.100.9:51999"
    assert endpoint("gw.example.test", 51820) == "gw.example.test:51820"
    assert endpoint("2001:db8::1", 51820) == "[2001:db8::1]:51820"
    assert endpoint("::ffff:198.51.100.9", 443) == "[::ffff:198.51.100.9]:443"


def test_without_a_gateway_tunnel_address_only_the_destinations_are_routed() -> None:
    gw = dict(wire()["gateways"][0], tunnel_address=None)
    plan = plan_client(snapshot(gateways=[gw]))
    assert "100.64.0.1/32" not in plan.routes
    assert plan.routes == ("10.1.0.0/24", "10.1.0.5/32", "192.168.10.0/23")


def test_a_user_with_no_allowed_destination_still_reaches_the_gateway_only() -> None:
    plan = plan_client(snapshot(routes=[]))
    assert plan.routes == ("100.64.0.1/32",)
    assert plan.peers[0].allowed_ips == ("100.64.0.1/32",)


def test_no_enrolled_gateway_means_no_peer_and_no_endpoint() -> None:
    plan = plan_client(snapshot(gateways=[]))
    assert (plan.peers, plan.gateway, plan.endpoint) == ((), None, None)
    assert plan.routes == ("10.1.0.0/24", "10.1.0.5/32", "192.168.10.0/23")
