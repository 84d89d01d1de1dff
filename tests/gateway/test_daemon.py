"""The gateway daemon's reconcile logic against an in-memory data plane: what it
plans into the tunnel, connector failover (probes and VRRP master claims),
endpoints kept across restarts, revocation. No root, no network (the namespace tests run the real backend)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fakedataplane import FakeDataplane
from zerogate.agent.state import DeviceIdentity
from zerogate.gateway import daemon as gateway_daemon
from zerogate.gateway.daemon import Gateway
from zerogate.model.snapshot import GatewaySnapshot, RevokedSnapshot, parse_snapshot
from zerogate.model.vrrp import CLAIM_TTL, VrrpState, encode
from zerogate.netops import links
from zerogate.netops.wireguard import PeerStatus


def key(n: int) -> str:
    return f"{n:0>43}="


def connector(name: str, n: int, group: str, subnets: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "device_id": n,
        "wg_public_key": key(n),
        "address": f"100.64.255.{n}",
        "connector_group": group,
        "subnets": subnets,
    }


def snapshot(revision: int = 5, **overrides: Any) -> GatewaySnapshot:
    data: dict[str, Any] = {
        "schema_version": "1.0",
        "revision": revision,
        "role": "gateway",
        "device_id": 1,
        "name": "gw1",
        "gateway": {
            "name": "gw1",
            "public_endpoint": "gw.example.test",
            "port_first": 51900,
            "port_last": 51901,
        },
        "tunnel_addresses": ["100.64.0.1"],
        "client_blocks": ["100.64.0.0/16"],
        "connectors": [
            connector("cn-a", 10, "site", ["10.1.0.0/24"]),
            connector("cn-b", 11, "site", ["10.1.0.0/24"]),
        ],
        "clients": [
            {"device_id": 20, "wg_public_key": key(20), "address": "100.64.0.2", "session_expires_at": None}
        ],
        "policy": {"grants": [], "valid_until": None},
    }
    return parse_snapshot("gateway", data | overrides)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Keep the daemon off this host: no sysctl, no ICMP; the nudged addresses are recorded."""
    nudged: list[list[str]] = []
    monkeypatch.setattr(links, "enable_forwarding", lambda: None)
    monkeypatch.setattr(gateway_daemon, "nudge", lambda addresses: nudged.append(list(addresses)))
    return nudged


def make(tmp_path: Path) -> tuple[Gateway, FakeDataplane]:
    identity = DeviceIdentity(tmp_path, "gateway", "gw1", 1, "https://127.0.0.1:1", b"", "zgd_x", "k")
    dp = FakeDataplane()
    return Gateway(identity, dp), dp


def test_a_snapshot_becomes_peers_routes_addresses_and_a_policy_table(
    tmp_path: Path, host: list[list[str]]
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    assert dp.listen_port == 51900 and dp.addresses == ("100.64.0.1/16",)
    assert dp.routes == ("10.1.0.0/24",)
    # the first connector by name carries the group's subnets while none has answered a probe yet
    assert dp.allowed(key(10)) == ("100.64.255.10/32", "10.1.0.0/24")
    assert dp.allowed(key(11)) == ("100.64.255.11/32",)
    assert dp.allowed(key(20)) == ("100.64.0.2/32",)
    assert dp.nft is not None and "100.64.0.2" in dp.nft
    assert gw.report()["details"]["revision"] == 5


def test_failover_moves_the_subnets_to_a_live_connector_and_stays_there(
    tmp_path: Path, host: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    caplog.set_level(logging.INFO, logger=gateway_daemon.__name__)
    gw.set_live_connectors({"cn-a", "cn-b"})
    assert gw.active == {"site": "cn-a"}
    nft_before, applies = dp.nft, dp.applies

    gw.set_live_connectors({"cn-b"})  # cn-a stops answering probes
    assert gw.active == {"site": "cn-b"}
    assert dp.allowed(key(11)) == ("100.64.255.11/32", "10.1.0.0/24")
    assert dp.allowed(key(10)) == ("100.64.255.10/32",)
    assert dp.applies == applies + 1 and dp.nft == nft_before  # the policy table is not re-rendered
    assert "connector cn-a is down: no probe answer for 0.9 s" in caplog.text
    assert "connector group site now served by cn-b" in caplog.text

    gw.set_live_connectors({"cn-a", "cn-b"})  # cn-a is back: no flapping back to it
    assert gw.active == {"site": "cn-b"}
    gw.set_live_connectors(set())  # none answers: keep the current one
    assert gw.active == {"site": "cn-b"}
    details = gw.report()["details"]
    assert details["failovers"] == 1  # reported, for zerogate_gateway_failovers_total
    assert details["nft_apply_mode"] == "full" and details["nft_apply_ms"] >= 0


def test_a_failed_failover_is_logged_and_the_probe_loop_goes_on(
    tmp_path: Path, host: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    dp.fail_apply = "wg refused"
    gw.set_live_connectors({"cn-b"})
    assert "failover reconcile failed: wg refused" in caplog.text
    assert gw.up == {"cn-b"}


def test_endpoints_from_the_last_run_are_restored_and_the_peers_nudged(
    tmp_path: Path, host: list[list[str]]
) -> None:
    saved = {key(10): "192.0.2.10:40001", key(20): "198.51.100.7:50000", key(99): "192.0.2.99:1"}
    (tmp_path / "endpoints.json").write_text(json.dumps(saved))
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    assert dp.endpoints == {key(10): "192.0.2.10:40001", key(20): "198.51.100.7:50000"}
    assert host == [["100.64.255.10", "100.64.0.2"]]  # one packet each: re-handshake at once
    gw.apply(snapshot(6))
    assert len(host) == 1  # only on the first apply of a run


def test_learned_endpoints_are_saved_for_planned_peers_only(tmp_path: Path, host: list[list[str]]) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    dp.peer_status = [
        PeerStatus(key(10), "192.0.2.10:40001", (), 1_700_000_000, 10, 10),
        PeerStatus(key(11), "192.0.2.11:40001", (), 0, 0, 0),  # no handshake: not learned
        PeerStatus(key(99), "192.0.2.99:1", (), 1_700_000_000, 1, 1),  # not planned
    ]
    gw.save_endpoints()
    saved = tmp_path / "endpoints.json"
    assert json.loads(saved.read_text()) == {key(10): "192.0.2.10:40001"}
    assert (saved.stat().st_mode & 0o777) == 0o600


def test_a_revoked_gateway_tears_everything_down_and_forgets_its_endpoints(
    tmp_path: Path, host: list[list[str]]
) -> None:
    (tmp_path / "endpoints.json").write_text("{}")
    gw, dp = make(tmp_path)
    snap = snapshot()
    gw.apply(snap)
    gw.apply(RevokedSnapshot.of(snap))
    assert dp.teardowns == 1 and not dp.exists
    assert not (tmp_path / "endpoints.json").exists()
    assert gw.snapshot is None and gw.plan is None and gw.next_deadline() is None


# --------------------------------------------------------------------------- VRRP master claims


def claim(state: str = "master", seq: int = 1, group: str = "site") -> bytes:
    return encode(VrrpState(group, state, seq))  # type: ignore[arg-type]


CN_A, CN_B = "100.64.255.10", "100.64.255.11"


def test_a_vrrp_master_claim_moves_the_group_at_once_over_the_probes_choice(
    tmp_path: Path, host: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    gw.set_live_connectors({"cn-a", "cn-b"})
    assert gw.active == {"site": "cn-a"}
    caplog.set_level(logging.INFO, logger=gateway_daemon.__name__)
    applies = dp.applies

    gw.on_state(CN_B, claim())  # keepalived made cn-b master: no probe has failed
    assert gw.active == {"site": "cn-b"} and dp.applies == applies + 1
    assert dp.allowed(key(11)) == ("100.64.255.11/32", "10.1.0.0/24")
    assert dp.allowed(key(10)) == ("100.64.255.10/32",)
    assert "connector group site now served by cn-b (VRRP master)" in caplog.text
    assert gw.report()["details"]["vrrp_masters"] == {"site": "cn-b"}

    gw.on_state(CN_B, claim())  # the repeat a second later changes nothing
    gw.review_claims()
    assert dp.applies == applies + 1
    # the probes alone would keep cn-a; the claim keeps cn-b while both answer
    gw.set_live_connectors({"cn-a"})
    gw.set_live_connectors({"cn-a", "cn-b"})
    assert gw.active == {"site": "cn-b"}


def test_spoofed_or_foreign_state_datagrams_change_nothing_and_are_logged_without_content(
    tmp_path: Path, host: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    gw.set_live_connectors({"cn-a", "cn-b"})
    applies = dp.applies
    gw.on_state("100.64.0.2", claim())  # a client
    gw.on_state(CN_B, claim(group="other"))
    gw.on_state(CN_B, b'{"v": 1, "group": "site", "state": "master", "seq": "EVIL\\n"}')
    assert gw.active == {"site": "cn-a"} and dp.applies == applies
    assert "EVIL" not in caplog.text
    assert "dropped VRRP state datagrams: 1 from 100.64.0.2 (not from a connector's tunnel address)" in (
        caplog.text
    )
    assert "vrrp_masters" not in gw.report()["details"]


def test_a_claim_from_a_connector_the_probes_lost_yields_to_them_once_it_is_stale(
    tmp_path: Path, host: list[list[str]]
) -> None:
    gw, _ = make(tmp_path)
    gw.apply(snapshot())
    gw.set_live_connectors({"cn-a"})
    gw.on_state(CN_B, claim())  # it just arrived through the tunnel: cn-b is alive
    assert gw.active == {"site": "cn-b"}
    gw.review_claims()
    assert gw.active == {"site": "cn-b"}
    gw.claims.claims["site"].heard -= gw.down_after + 0.1  # no repeat, and no probe answer either
    gw.review_claims()
    assert gw.active == {"site": "cn-a"}


def test_a_withdrawn_or_expired_claim_hands_the_group_back_to_the_probes(
    tmp_path: Path, host: list[list[str]]
) -> None:
    gw, _ = make(tmp_path)
    gw.apply(snapshot())
    gw.set_live_connectors({"cn-a", "cn-b"})
    gw.on_state(CN_B, claim(seq=1))
    assert gw.active == {"site": "cn-b"}
    gw.on_state(CN_B, claim("backup", 2))
    assert gw.claims.masters(0) == {} and "vrrp_masters" not in gw.report()["details"]
    gw.set_live_connectors({"cn-a"})  # cn-b stops answering: the probes move the group
    assert gw.active == {"site": "cn-a"}

    gw.on_state(CN_B, claim(seq=3))
    gw.set_live_connectors({"cn-a", "cn-b"})
    assert gw.active == {"site": "cn-b"}
    gw.claims.claims["site"].heard -= CLAIM_TTL + 1  # not repeated: forgotten
    gw.set_live_connectors({"cn-a"})
    assert gw.active == {"site": "cn-a"}


def test_the_policy_table_admits_state_datagrams_to_the_gateways_tunnel_address_only(
    tmp_path: Path, host: list[list[str]]
) -> None:
    gw, dp = make(tmp_path)
    gw.apply(snapshot())
    assert dp.nft is not None
    rules = [line.strip() for line in dp.nft.splitlines() if "dport 3784" in line]
    assert rules == [
        'iifname "zg-test" ip daddr 100.64.0.1 udp dport 3784 limit rate 200/second burst 400 packets accept'
    ]
