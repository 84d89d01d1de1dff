"""The connector daemon's reconcile logic against an in-memory data plane:
forwarding mode, what it plans into the tunnel, telling a dead tunnel and
re-dialling, revocation. No root, no network (the namespace tests run the
real backend)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from fakedataplane import FakeDataplane
from zerogate.agent.state import DeviceIdentity
from zerogate.connector.daemon import NOT_UP_AFTER, NOT_UP_REPEAT, SILENT_AFTER, ConnectorDaemon, TunnelWatch
from zerogate.model.snapshot import ConnectorSnapshot, RevokedSnapshot, parse_snapshot
from zerogate.netops import links
from zerogate.netops.wireguard import PeerStatus

GW_KEY = "A" * 43 + "="


def snapshot(revision: int = 3, **overrides: Any) -> ConnectorSnapshot:
    data: dict[str, Any] = {
        "schema_version": "1.0",
        "revision": revision,
        "role": "connector",
        "device_id": 7,
        "name": "cn-fra",
        "address": "100.64.255.1",
        "connector_group": {
            "name": "site",
            "subnets": ["10.20.0.0/16"],
            "snat": True,
            "vrrp_virtual_ip": None,
        },
        "client_blocks": ["100.64.0.0/16"],
        "gateways": [
            {
                "name": "edge",
                "endpoint": "203.0.113.7",
                "port": 51820,
                "port_first": 51820,
                "port_last": 53000,
                "wg_public_key": GW_KEY,
                "tunnel_address": "100.64.0.1",
            }
        ],
    }
    return parse_snapshot("connector", data | overrides)


class Host:
    """The host's forwarding switch as the daemon sees it (nothing real is touched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.forwarded_before = False
        self.docker = False
        self.calls: list[str] = []
        monkeypatch.setattr(links, "forwarded_before", lambda state_dir: self.forwarded_before)
        monkeypatch.setattr(links, "docker_present", lambda: self.docker)
        monkeypatch.setattr(links, "enable_forwarding", lambda: self.calls.append("enable"))
        monkeypatch.setattr(links, "restore_forwarding", self._restore)

    def _restore(self, state_dir: Path) -> bool:
        self.calls.append("restore")
        return not self.forwarded_before


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(monkeypatch)


def make(tmp_path: Path) -> tuple[ConnectorDaemon, FakeDataplane]:
    identity = DeviceIdentity(tmp_path, "connector", "cn-fra", 7, "https://127.0.0.1:1", b"", "zgd_x", "k")
    dp = FakeDataplane()
    return ConnectorDaemon(identity, dp, 51820), dp


def test_a_snapshot_becomes_one_gateway_peer_the_client_routes_and_then_forwarding(
    tmp_path: Path, host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cn, dp = make(tmp_path)
    cn.apply(snapshot())
    assert dp.listen_port == 51820 and dp.addresses == ("100.64.255.1/32",)
    assert dp.routes == ("100.64.0.0/16",)
    [peer] = dp.peers
    assert (peer.public_key, peer.endpoint, peer.allowed_ips) == (
        GW_KEY,
        "203.0.113.7:51820",
        ("100.64.0.0/16",),
    )
    assert host.calls == ["enable"]  # after the table is in place
    assert "dialling gateway edge" in caplog.text
    assert "applied revision 3: fronting 10.20.0.0/16 (SNAT on)" in caplog.text


@pytest.mark.parametrize(
    ("forwarded_before", "docker", "strict"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_forwarding_is_strict_only_on_a_host_that_forwarded_nothing_before(
    tmp_path: Path, host: Host, forwarded_before: bool, docker: bool, strict: bool
) -> None:
    host.forwarded_before, host.docker = forwarded_before, docker
    cn, dp = make(tmp_path)
    cn.apply(snapshot())
    assert cn.strict is strict
    assert dp.nft is not None
    assert ("policy drop" in dp.nft.split("chain forward")[1].split("}")[0]) is strict
    host.docker = not docker  # decided once per run, not on every revision
    cn.apply(snapshot(4))
    assert cn.strict is strict


def test_a_revoked_connector_puts_forwarding_back_and_tears_down(tmp_path: Path, host: Host) -> None:
    cn, dp = make(tmp_path)
    snap = snapshot()
    cn.apply(snap)
    cn.apply(RevokedSnapshot.of(snap))
    assert host.calls == ["enable", "restore"] and dp.teardowns == 1
    assert cn.plan is None and cn.snapshot is None and cn.strict is None


def handshake(seconds_ago: float, rx: int) -> list[PeerStatus]:
    return [PeerStatus(GW_KEY, "203.0.113.7:51820", (), int(time.time() - seconds_ago), rx, 0)]


def test_a_live_tunnel_is_up_and_a_silent_one_is_down_and_re_dialled(
    tmp_path: Path, host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cn, dp = make(tmp_path)
    cn.apply(snapshot())
    w = TunnelWatch()
    dp.peer_status = handshake(10, rx=100)
    cn.watch_tunnel(w, 1000.0)
    assert cn.tunnel_up and cn.report()["details"]["tunnel_up"]
    assert "tunnel to gateway edge is up (handshake at" in caplog.text
    cn.watch_tunnel(w, 1000.0 + SILENT_AFTER - 0.5)  # nothing new received, but not for long
    assert cn.tunnel_up and dp.redials == []

    cn.watch_tunnel(w, 1000.0 + SILENT_AFTER + 0.5)  # the gateway's probes stopped arriving
    assert not cn.tunnel_up
    assert "tunnel to gateway edge is down: nothing received for 4 s" in caplog.text
    assert dp.redials == [(GW_KEY,)]
    hint = cn.report()["details"]["tunnel_hint"]
    assert "UDP to 203.0.113.7:51820" in hint and "51820-53000" in hint

    cn.watch_tunnel(w, 1004.0)  # within the re-dial backoff (about 1 s): no second re-dial
    assert len(dp.redials) == 1
    cn.watch_tunnel(w, 1006.0)
    assert len(dp.redials) == 2

    dp.peer_status = handshake(1, rx=200)  # answered again
    cn.watch_tunnel(w, 1007.0)
    assert cn.tunnel_up and "tunnel to gateway edge is up again after" in caplog.text
    assert cn.report()["details"]["tunnel_hint"] is None


def test_a_fresh_handshake_gets_a_moment_before_a_re_dial(tmp_path: Path, host: Host) -> None:
    cn, dp = make(tmp_path)
    cn.apply(snapshot())
    w = TunnelWatch()
    dp.peer_status = handshake(1, rx=0)
    w.last_rx, w.last_rx_at = 0, 0.0  # nothing received for long
    cn.watch_tunnel(w, 100.0)
    assert not cn.tunnel_up and dp.redials == []


def test_a_tunnel_that_never_comes_up_is_explained_once_in_a_while(
    tmp_path: Path, host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    cn, dp = make(tmp_path)
    cn.apply(snapshot())
    w = TunnelWatch()
    dp.peer_status = [PeerStatus(GW_KEY, "203.0.113.7:51820", (), 0, 0, 0)]
    cn.watch_tunnel(w, 50.0)
    assert dp.redials == [(GW_KEY,)]  # no session yet: dial afresh at once
    caplog.set_level(logging.WARNING)
    cn.watch_tunnel(w, 50.0 + NOT_UP_AFTER - 1)
    assert "is not up" not in caplog.text
    cn.watch_tunnel(w, 50.0 + NOT_UP_AFTER)
    warnings = [r.getMessage() for r in caplog.records if "is not up after" in r.getMessage()]
    assert warnings == [
        "tunnel to gateway edge (endpoint 203.0.113.7:51820) is not up after 10 s: no WireGuard handshake "
        "answer. Check that this host may send UDP to 203.0.113.7:51820 (the gateway's UDP port range is "
        "51820-53000) through any egress firewall"
    ]
    cn.watch_tunnel(w, 50.0 + NOT_UP_AFTER + NOT_UP_REPEAT - 1)
    assert len([r for r in caplog.records if "is not up after" in r.getMessage()]) == 1
    cn.watch_tunnel(w, 50.0 + NOT_UP_AFTER + NOT_UP_REPEAT)
    assert len([r for r in caplog.records if "is not up after" in r.getMessage()]) == 2


def test_nothing_is_watched_before_a_plan_with_a_gateway(tmp_path: Path, host: Host) -> None:
    cn, dp = make(tmp_path)
    w = TunnelWatch()
    cn.watch_tunnel(w, 1.0)
    cn.apply(snapshot(gateways=[]))
    cn.watch_tunnel(w, 2.0)
    assert w.down_since is None and dp.redials == [] and not cn.tunnel_up
