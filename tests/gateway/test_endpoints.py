"""The gateway's saved peer endpoints (``endpoints.json``): what is kept across a
restart, and that a damaged or hostile file changes nothing it should not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from zerogate.gateway.endpoints import endpoints_to_keep, load_endpoints, tunnel_peers
from zerogate.model.snapshot import parse_snapshot
from zerogate.netops.wireguard import PeerStatus, valid_endpoint, valid_key

A = "A" * 43 + "="
B = "B" * 42 + "A="
C = "C" * 42 + "E="


def peer(key: str, endpoint: str | None, handshake: int) -> PeerStatus:
    return PeerStatus(key, endpoint, (), handshake, 0, 0)


def test_only_handshaken_planned_peers_are_learned_and_old_entries_kept_while_planned() -> None:
    peers = [
        peer(A, "198.51.100.1:51820", 1700000000),  # handshook: learned
        peer(B, "198.51.100.2:40000", 0),  # set by hand, never handshook: not learned
        peer(C, "198.51.100.3:40001", 1700000000),  # handshook, but no longer planned
    ]
    previous = {B: "198.51.100.9:1234", C: "198.51.100.8:1"}
    assert endpoints_to_keep(peers, {A, B}, previous) == {A: "198.51.100.1:51820", B: "198.51.100.9:1234"}


def test_load_skips_malformed_entries_and_damaged_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "endpoints.json"
    assert load_endpoints(path) == {}  # first start: no file, no warning
    path.write_text(
        json.dumps(
            {A: "198.51.100.1:51820", B: "198.51.100.2:1; rm -rf /", "not a key": "198.51.100.3:1", C: 7}
        )
    )
    with caplog.at_level(logging.WARNING):
        assert load_endpoints(path) == {A: "198.51.100.1:51820"}
    assert "ignoring 3 malformed entries" in caplog.text
    assert "rm -rf" not in caplog.text  # what the file holds is never echoed
    for damaged in ("{not json", "[1, 2]"):
        path.write_text(damaged)
        assert load_endpoints(path) == {}


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("198.51.100.1:51820", True),
        ("[2001:db8::1]:51820", True),
        ("198.51.100.1:0", False),
        ("198.51.100.1:65536", False),
        ("host.example:51820", False),
        ("198.51.100.1:51820\n", False),
    ],
)
def test_endpoint_validation(text: str, ok: bool) -> None:
    assert valid_endpoint(text) is ok


def test_key_validation() -> None:
    assert valid_key(A) and not valid_key(A[:-1]) and not valid_key("B" * 43 + "=")  # last char holds 4 bits


def test_tunnel_peers_names_connectors_and_clients() -> None:
    connector = {"name": "cn1", "device_id": 3, "wg_public_key": A, "address": "100.64.0.2"}
    snapshot = parse_snapshot(
        "gateway",
        {
            "revision": 1,
            "role": "gateway",
            "device_id": 1,
            "name": "gw",
            "gateway": None,
            "tunnel_addresses": [],
            "client_blocks": [],
            "connectors": [connector | {"connector_group": "site", "subnets": []}],
            "clients": [
                {"device_id": 7, "wg_public_key": B, "address": "100.64.0.9", "session_expires_at": None},
                {"device_id": 8, "wg_public_key": C, "address": None, "session_expires_at": None},
            ],
            "policy": {"grants": [], "valid_until": None},
        },
    )
    assert tunnel_peers(snapshot) == {
        A: ("connector", "cn1", "100.64.0.2"),
        B: ("client", "device 7", "100.64.0.9"),
    }
