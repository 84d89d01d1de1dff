"""``zerogate connector status``: the tunnel as the connector host sees it, with
what to check when it is down. Real wireguard-go interfaces in namespaces this
test creates; the state directory is written as an enrolled connector has it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns
from zerogate.model.dataplane import WgPeer
from zerogate.netops.wireguard import WgInterface
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import zerogate_argv

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("wireguard-go", "wg", "ip")),
    reason="needs root and the Debian packages wireguard-go and wireguard-tools",
)
GATEWAY = {
    "name": "edge",
    "endpoint": "203.0.113.7",
    "port": 51820,
    "port_first": 51820,
    "port_last": 53000,
    "wg_public_key": "A" * 43 + "=",
    "tunnel_address": "100.64.0.1",
}
# snapshot.json as the connector daemon leaves it
SNAPSHOT = {
    "schema_version": "1.0",
    "revision": 3,
    "role": "connector",
    "device_id": 7,
    "name": "cn-fra",
    "address": "100.64.255.1",
    "connector_group": {"name": "site", "subnets": ["10.20.0.0/16"], "snat": True, "vrrp_virtual_ip": None},
    "client_blocks": ["100.64.0.0/16"],
    "gateways": [GATEWAY],
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    (tmp_path / "device.json").write_text(json.dumps({"role": "connector", "name": "cn-fra", "device_id": 7}))
    (tmp_path / "snapshot.json").write_text(json.dumps(SNAPSHOT))
    return tmp_path


def ifname() -> str:
    return f"zgst{os.getpid() % 10000}{secrets.token_hex(2)}"


def status(ns: Netns, state_dir: Path, interface: str) -> dict[str, Any]:
    argv = [*zerogate_argv(), "connector", "status", "--json", "--state-dir", str(state_dir)]
    argv += ["--interface", interface]
    full = ["ip", "netns", "exec", ns.name, *argv]
    r = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_no_interface_says_to_check_the_daemon(make_netns: Callable[[str], Netns], state_dir: Path) -> None:
    shown = status(make_netns("sn"), state_dir, ifname())
    assert (shown["name"], shown["tunnel"], shown["last_handshake_at"]) == ("cn-fra", "down", None)
    assert "'zerogate connector run' is running" in shown["tunnel_hint"]


def test_no_handshake_names_the_gateways_udp_port_range(
    make_netns: Callable[[str], Netns], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROGATE_WG_IMPLEMENTATION", "userspace")
    ns, wg = make_netns("sd"), WgInterface(ifname())
    ns.call(wg.create)
    peer = WgPeer(generate_keypair()[1], ("100.64.0.1/32",), "203.0.113.7:51820", 25)
    ns.call(lambda: wg.sync(generate_keypair()[0], 0, [peer]))
    shown = status(ns, state_dir, wg.name)
    assert (shown["tunnel"], shown["last_handshake_at"], shown["gateway"]) == ("down", None, "edge")
    assert shown["tunnel_hint"] == (
        "no WireGuard handshake with the gateway (never one): check that this host may send UDP to "
        "203.0.113.7:51820 (the gateway's UDP port range is 51820-53000) through any egress firewall"
    )


def test_a_fresh_handshake_is_up(
    make_netns: Callable[[str], Netns], state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROGATE_WG_IMPLEMENTATION", "userspace")
    cn, gw = make_netns("su"), make_netns("sg")
    cn.ip("link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", gw.name)
    for ns, addr in ((cn, "192.168.204.1/24"), (gw, "192.168.204.2/24")):
        ns.ip("addr", "add", addr, "dev", "v0")
        ns.ip("link", "set", "v0", "up")
    wc, wgw = WgInterface(ifname()), WgInterface(ifname())
    (priv_c, pub_c), (priv_g, pub_g) = generate_keypair(), generate_keypair()
    cn.call(wc.create)
    gw.call(wgw.create)
    cn.call(lambda: wc.sync(priv_c, 0, [WgPeer(pub_g, ("10.98.0.2/32",), "192.168.204.2:51931", 1)]))
    gw.call(lambda: wgw.sync(priv_g, 51931, [WgPeer(pub_c, ("10.98.0.1/32",))]))
    deadline = time.monotonic() + 15
    while not any(p.latest_handshake for p in cn.call(wc.status)[1]):
        assert time.monotonic() < deadline, "no handshake between the two namespaces within 15 s"
        time.sleep(0.1)
    shown = status(cn, state_dir, wc.name)
    assert (shown["tunnel"], shown["tunnel_hint"], shown["endpoint"]) == ("up", None, "192.168.204.2:51931")
    assert shown["last_handshake_at"] is not None
