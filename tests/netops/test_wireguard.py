"""WireGuard adapter: config rendering and ``wg show dump`` parsing (pure), then
real interfaces run by wireguard-go inside network namespaces this test creates.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns, sh
from zerogate.model.dataplane import WgPeer
from zerogate.netops import wireguard
from zerogate.netops.wireguard import (
    MAX_IFNAME,
    InterfaceNameInUse,
    PeerStatus,
    WgInterface,
    check_ifname,
    parse_dump,
    render_config,
)
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.lab import wait_for

# Captured from `wg show IFACE dump` (wireguard-tools v1.0.20210914, wireguard-go):
# the interface line, then one line per peer; fields are tab-separated.
DUMP = (
    "qEfYDBfvWDIDToS1vjpckZvtEDoLSw41/zQyCJOdzF0=\tGyN9wAP4ZNuFFt1faIrua1K7wywj18xfnJNXX1OxUXM=\t51999\toff\n"
    "ll2R3IR8kXp/Nsv0PeuDxc2powwbbT2atG7W+2B8Hn8=\t(none)\t[2001:db8::1]:51820\t10.0.0.0/24,10.1.0.1/32"
    "\t1767225600\t1208\t2296\t25\n"
    "K7UdmtlXYWLUVlLFR9h0cIORmCFc0SMaRg3ED2jGvCM=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    "c2VjcmV0LWJ1dC1ub3QtcmVhbGx5LXVzZWQtaGVyZTE=\t(none)\t192.0.2.7:40123\t100.64.0.2/32\t1767225000\t92\t148\toff\n"
)


# --------------------------------------------------------------------------- pure


def test_check_ifname_accepts_kernel_names_up_to_15_characters() -> None:
    for name in ("zg0", "zg-gw_1.a", "z" * MAX_IFNAME):
        assert check_ifname(name) == name


@pytest.mark.parametrize("bad", ["", "z" * (MAX_IFNAME + 1), "zg 0", "zg/0", "zg:0", "zg0\n"])
def test_check_ifname_rejects_what_the_kernel_or_wg_would_refuse(bad: str) -> None:
    with pytest.raises(ValueError, match=r"interface name .* is not valid: 1-15 letters"):
        check_ifname(bad)
    with pytest.raises(ValueError, match="interface name"):
        WgInterface(bad)


def test_check_ifname_measures_the_name_in_bytes_as_the_kernel_does() -> None:
    # 15 characters but 30 bytes in UTF-8: `ip link add` refuses it ("Attribute failed policy validation")
    with pytest.raises(ValueError, match="interface name"):
        check_ifname("é" * MAX_IFNAME)


def test_render_config_sorts_peers_and_omits_what_is_not_set() -> None:
    peers = [
        WgPeer("Bkey=", ("100.64.0.2/32",)),
        WgPeer("Akey=", ("10.0.0.0/24", "100.64.0.1/32"), "gw.example.test:51820", 25),
        WgPeer("Ckey="),
    ]
    assert render_config("PRIV=", 51820, peers) == (
        "[Interface]\n"
        "PrivateKey = PRIV=\n"
        "ListenPort = 51820\n"
        "\n"
        "[Peer]\n"
        "PublicKey = Akey=\n"
        "AllowedIPs = 10.0.0.0/24, 100.64.0.1/32\n"
        "Endpoint = gw.example.test:51820\n"
        "PersistentKeepalive = 25\n"
        "\n"
        "[Peer]\n"
        "PublicKey = Bkey=\n"
        "AllowedIPs = 100.64.0.2/32\n"
        "\n"
        "[Peer]\n"
        "PublicKey = Ckey=\n"
    )
    assert render_config("PRIV=", None, []) == "[Interface]\nPrivateKey = PRIV=\n"


def test_parse_dump_reads_the_listen_port_and_every_peer() -> None:
    port, peers = parse_dump(DUMP)
    assert port == 51999
    assert peers == [
        PeerStatus(
            "ll2R3IR8kXp/Nsv0PeuDxc2powwbbT2atG7W+2B8Hn8=",
            "[2001:db8::1]:51820",
            ("10.0.0.0/24", "10.1.0.1/32"),
            1767225600,
            1208,
            2296,
        ),
        PeerStatus("K7UdmtlXYWLUVlLFR9h0cIORmCFc0SMaRg3ED2jGvCM=", None, (), 0, 0, 0),
        PeerStatus(
            "c2VjcmV0LWJ1dC1ub3QtcmVhbGx5LXVzZWQtaGVyZTE=",
            "192.0.2.7:40123",
            ("100.64.0.2/32",),
            1767225000,
            92,
            148,
        ),
    ]


def test_parse_dump_of_an_interface_without_peers_or_port() -> None:
    assert parse_dump("priv=\tpub=\t51820\toff\n\n") == (51820, [])
    assert parse_dump("(none)\t(none)\t0\toff\n") == (0, [])


def test_parse_dump_refuses_output_it_does_not_understand() -> None:
    with pytest.raises(ValueError, match="empty 'wg show dump' output"):
        parse_dump("\n")
    with pytest.raises(ValueError, match="unexpected 'wg show dump' line"):
        parse_dump("priv=\tpub=\t51820\toff\npeer=\t(none)\t(none)\n")


# --------------------------------------------------------------------------- real interfaces

needs_wireguard_go = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("wireguard-go", "wg", "ip")),
    reason="needs root and the Debian packages wireguard-go and wireguard-tools",
)


@pytest.fixture
def userspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROGATE_WG_IMPLEMENTATION", "userspace")


def ifname() -> str:
    name = f"zgut{os.getpid() % 10000}{secrets.token_hex(2)}"
    assert len(name) <= MAX_IFNAME
    return name


def link(ns: Netns, dev: str) -> dict[str, Any]:
    [info] = json.loads(ns.ip("-j", "link", "show", "dev", dev))
    return dict(info)


@needs_wireguard_go
@pytest.mark.usefixtures("userspace")
def test_create_sync_status_delete_with_wireguard_go(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("wg")
    wg = WgInterface(ifname())
    priv, _ = generate_keypair()
    keys = [generate_keypair()[1] for _ in range(3)]

    assert ns.call(wg.create) == "wireguard-go"
    assert ns.call(wg.exists)
    info = link(ns, wg.name)
    assert info["mtu"] == 1420 and "UP" in info["flags"]
    daemons = ns.pids()
    assert daemons, "wireguard-go should run in the namespace"
    assert not WgInterface(wg.name).exists()  # it lives in the namespace, not here

    ns.call(
        lambda: wg.sync(priv, 51901, [WgPeer(keys[0], ("10.0.0.0/24",)), WgPeer(keys[1], ("100.64.0.2/32",))])
    )
    port, peers = ns.call(wg.status)
    assert port == 51901
    assert {p.public_key: p.allowed_ips for p in peers} == {
        keys[0]: ("10.0.0.0/24",),
        keys[1]: ("100.64.0.2/32",),
    }

    # change one peer, drop one, add one: the interface and its daemon stay as they are
    ns.call(
        lambda: wg.sync(
            priv,
            51901,
            [
                WgPeer(keys[0], ("10.0.0.0/24", "10.1.0.0/16")),
                # the namespace has no route anywhere: this endpoint is never reached
                WgPeer(keys[2], ("100.64.0.3/32",), "192.0.2.1:51820", 25),
            ],
        )
    )
    port, peers = ns.call(wg.status)
    by_key = {p.public_key: p for p in peers}
    assert set(by_key) == {keys[0], keys[2]}
    assert by_key[keys[0]].allowed_ips == ("10.0.0.0/24", "10.1.0.0/16")
    assert by_key[keys[2]].endpoint == "192.0.2.1:51820"
    assert link(ns, wg.name)["ifindex"] == info["ifindex"]
    assert ns.pids() == daemons

    # create() again leaves the existing interface alone
    ns.call(wg.create)
    assert link(ns, wg.name)["ifindex"] == info["ifindex"]
    assert sorted(ns.call(wg.status)[1], key=lambda p: p.public_key) == sorted(
        peers, key=lambda p: p.public_key
    )

    ns.call(wg.delete)
    assert not ns.call(wg.exists)
    wait_for(lambda: ns.pids() == [], 10, "wireguard-go to exit once its interface is gone")
    assert not Path(f"/var/run/wireguard/{wg.name}.sock").exists()
    ns.call(wg.delete)  # deleting twice is fine


@needs_wireguard_go
@pytest.mark.usefixtures("userspace")
def test_two_interfaces_handshake_and_status_reports_it(make_netns: Callable[[str], Netns]) -> None:
    a, b = make_netns("wa"), make_netns("wb")
    a.ip("link", "add", "v0", "type", "veth", "peer", "name", "v0", "netns", b.name)
    for ns, addr in ((a, "192.168.203.1/24"), (b, "192.168.203.2/24")):
        ns.ip("addr", "add", addr, "dev", "v0")
        ns.ip("link", "set", "v0", "up")
    wa, wb = WgInterface(ifname()), WgInterface(ifname())
    (priv_a, pub_a), (priv_b, pub_b) = generate_keypair(), generate_keypair()
    a.call(wa.create)
    b.call(wb.create)
    a.call(lambda: wa.sync(priv_a, 51911, [WgPeer(pub_b, ("10.99.0.2/32",), "192.168.203.2:51912")]))
    b.call(lambda: wb.sync(priv_b, 51912, [WgPeer(pub_a, ("10.99.0.1/32",))]))  # b learns a's endpoint
    a.ip("addr", "add", "10.99.0.1/24", "dev", wa.name)
    b.ip("addr", "add", "10.99.0.2/24", "dev", wb.name)

    ping = sh("ip", "netns", "exec", a.name, "ping", "-c", "1", "-W", "5", "10.99.0.2", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    _, [peer] = a.call(wa.status)
    assert peer.public_key == pub_b and peer.endpoint == "192.168.203.2:51912"
    assert peer.latest_handshake > time.time() - 60
    assert peer.rx_bytes > 0 and peer.tx_bytes > 0
    _, [back] = b.call(wb.status)
    assert back.endpoint == "192.168.203.1:51911"  # roamed to where a's packets came from


def in_use_message(name: str) -> str:
    return (
        f"a WireGuard interface named {name} already exists on this host (possibly in another network "
        f"namespace: its control socket /var/run/wireguard/{name}.sock is in use); pick another --interface"
    )


@needs_wireguard_go
@pytest.mark.usefixtures("userspace")
def test_a_name_taken_in_another_namespace_is_refused_plainly(
    make_netns: Callable[[str], Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = make_netns("ca"), make_netns("cb")
    taken = WgInterface(ifname())
    first.call(taken.create)

    with pytest.raises(InterfaceNameInUse) as refused:
        second.call(WgInterface(taken.name).create)
    assert str(refused.value) == in_use_message(taken.name)
    # Should the check miss it (a race), wireguard-go's own failure says the same, without
    # its banner, and the TUN device it made before failing is not left behind.
    monkeypatch.setattr(wireguard, "control_socket_in_use", lambda name: False)
    with pytest.raises(InterfaceNameInUse) as translated:
        second.call(WgInterface(taken.name).create)
    assert str(translated.value) == in_use_message(taken.name)
    assert not second.call(WgInterface(taken.name).exists)

    # The first interface is untouched and still takes configuration.
    private, _ = generate_keypair()
    first.call(lambda: taken.sync(private, 51921, [WgPeer(generate_keypair()[1], ("10.0.0.0/24",))]))
    assert first.call(taken.status)[0] == 51921


@needs_wireguard_go
@pytest.mark.usefixtures("userspace")
def test_a_stale_control_socket_is_removed(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("cs")
    wg = WgInterface(ifname())
    path = wireguard.SOCKET_DIR / f"{wg.name}.sock"
    wireguard.SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays after close: nobody listens on it (a killed wireguard-go)
    try:
        assert ns.call(wg.create) == "wireguard-go"
        assert ns.call(wg.exists)
    finally:
        ns.call(wg.delete)
        path.unlink(missing_ok=True)
