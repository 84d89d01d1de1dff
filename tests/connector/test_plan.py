"""The connector's plan: one peer (the gateway), its routes and its nftables table.

The table is checked against golden files (strict with SNAT, shared without),
loaded with the real ``nft`` in a fresh namespace, and exercised with real
packets in both forwarding modes.

Regenerate the golden files with ``ZEROGATE_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns, call_in_netns, tcp
from packets import Counters, send_tcp_segment
from zerogate.connector.plan import KEEPALIVE_SECONDS, forwarding_notice, plan_connector
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ConnectorSnapshot, parse_snapshot
from zerogate.netops import nftables

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
LISTEN_PORT = 51830
needs_root_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and the Debian package nftables"
)


def key(n: int) -> str:
    return f"{n:0>43}="


def wire(snat: bool = True, **overrides: Any) -> dict[str, Any]:
    """The connector snapshot as the controller sends it (JSON, parsed)."""
    snap: dict[str, Any] = {
        "schema_version": "1.0",
        "revision": 9,
        "role": "connector",
        "device_id": 5,
        "name": "cn1",
        "address": "100.64.255.1",
        "connector_group": {
            "name": "site",
            "subnets": ["192.168.202.0/24", "10.20.0.0/16"],
            "snat": snat,
            "vrrp_virtual_ip": None,
        },
        "client_blocks": ["100.64.0.0/16", "100.65.0.0/16"],
        "gateways": [
            {
                "name": "gw-a",
                "endpoint": "gw.example.test",
                "port": 51820,
                "wg_public_key": key(1),
                "tunnel_address": "100.64.0.1",
            },
            {
                "name": "gw-b",
                "endpoint": "2001:db8::7",
                "port": 51821,
                "wg_public_key": key(2),
                "tunnel_address": "100.64.0.1",
            },
        ],
    }
    return snap | overrides


def snapshot(snat: bool = True, **overrides: Any) -> ConnectorSnapshot:
    return parse_snapshot("connector", wire(snat, **overrides))


# --------------------------------------------------------------------------- pure


def test_the_connector_dials_the_first_gateway_with_the_client_blocks_and_a_keepalive() -> None:
    plan = plan_connector(snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=True)
    assert plan.gateway == "gw-a"
    assert plan.peers == (
        WgPeer(key(1), ("100.64.0.0/16", "100.65.0.0/16"), "gw.example.test:51820", KEEPALIVE_SECONDS),
    )
    assert plan.address == "100.64.255.1/32"
    assert plan.routes == ("100.64.0.0/16", "100.65.0.0/16")


def test_an_ipv6_gateway_endpoint_is_written_in_brackets() -> None:
    only_b = snapshot(gateways=[wire()["gateways"][1]])
    plan = plan_connector(only_b, interface="zg0", listen_port=LISTEN_PORT, strict=True)
    assert plan.peers[0].endpoint == "[2001:db8::7]:51821"
    v4 = dict(wire()["gateways"][0], endpoint="198.51.100.7")
    assert plan_connector(snapshot(gateways=[v4]), interface="zg0", listen_port=1, strict=True).peers[
        0
    ].endpoint == ("198.51.100.7:51820")


def test_without_an_enrolled_gateway_there_is_no_peer_and_no_probe_rule() -> None:
    plan = plan_connector(snapshot(gateways=[]), interface="zg0", listen_port=LISTEN_PORT, strict=True)
    assert (plan.peers, plan.gateway) == ((), None)
    assert "echo-request" not in plan.nft_body
    assert plan.routes == ("100.64.0.0/16", "100.65.0.0/16")  # routes still point into the tunnel


def test_snat_adds_exactly_one_masquerade_chain() -> None:
    on = plan_connector(snapshot(snat=True), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    off = plan_connector(snapshot(snat=False), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    assert on.count("masquerade") == 1 and "masquerade" not in off
    # SNAT appends the postrouting chain; only without it may the LAN continue failed-over flows
    assert off.replace(f"    {FAILED_OVER}\n", "") + on[on.index("  chain postrouting {") :] == on
    assert f"udp dport {LISTEN_PORT} ct state new drop" in off


def test_strict_mode_drops_by_policy_and_shared_mode_drops_only_what_touches_the_tunnel() -> None:
    strict = plan_connector(snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    shared = plan_connector(snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=False).nft_body
    forward = "type filter hook forward priority filter; policy"
    assert f"{forward} drop;" in strict and f"{forward} accept;" in shared
    assert "ip saddr @fronted drop" in shared and "ip saddr @fronted drop" not in strict
    # the input chain, the accepted paths and SNAT are the same in both modes
    assert strict.split("  chain forward")[0] == shared.split("  chain forward")[0]
    assert strict.split("  chain postrouting")[1] == shared.split("  chain postrouting")[1]


def test_the_forwarding_notice_says_what_is_dropped_and_why() -> None:
    subnets = ["10.20.0.0/16", "192.168.202.0/24"]
    assert forwarding_notice(forwarded_before=False, docker=False, subnets=subnets) == (
        "this host did not forward packets before zerogate: the connector forwards only "
        "tunnel → 10.20.0.0/16, 192.168.202.0/24 and their replies; everything else through it is dropped"
    )
    docker = forwarding_notice(forwarded_before=False, docker=True, subnets=subnets)
    assert docker.startswith(
        "this host forwards packets of its own (IPv4 forwarding was off before zerogate, Docker detected): "
        "zerogate leaves that forwarding to the host's own firewall"
    )
    assert "hairpin traffic not involving the tunnel is the host's business" in docker
    forwarded = forwarding_notice(forwarded_before=True, docker=False, subnets=[])
    assert "(IPv4 forwarding was on before zerogate, Docker not detected)" in forwarded


@pytest.mark.parametrize(
    ("snat", "strict", "vrrp"),
    [(True, True, False), (False, False, False), (True, True, True), (False, True, True)],
    ids=["strict-snat", "shared-no-snat", "strict-snat-vrrp", "strict-no-snat-vrrp"],
)
def test_render_connector_nft_matches_the_golden_file(snat: bool, strict: bool, vrrp: bool) -> None:
    snap = vrrp_snapshot(snat=snat) if vrrp else snapshot(snat=snat)
    body = plan_connector(snap, interface="zg0", listen_port=LISTEN_PORT, strict=strict).nft_body
    name = f"{'strict' if strict else 'shared'}-{'snat' if snat else 'no-snat'}{'-vrrp' if vrrp else ''}"
    path = GOLDEN / f"connector-{name}.nft"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(body)
    assert path.exists(), f"{path} missing: run with ZEROGATE_UPDATE_GOLDEN=1"
    assert body == path.read_text(), (
        f"{path.name} differs; if intended, regenerate with ZEROGATE_UPDATE_GOLDEN=1"
    )


# --------------------------------------------------------------------------- namespaces


def load(ns: Netns, body: str) -> None:
    ns.run("nft", "-f", "-", input=nftables.replace_table_script("inet", nftables.TABLE, body))


@needs_root_nft
@pytest.mark.parametrize(
    ("snat", "vrrp_peers"),
    [(True, None), (False, None), (True, []), (False, ["192.168.202.2", "192.168.202.3"])],
    ids=["snat", "no-snat", "snat-vrrp-multicast", "no-snat-vrrp-unicast"],
)
def test_the_rendered_table_loads_and_reloads_in_a_fresh_namespace(
    make_netns: Callable[[str], Netns], snat: bool, vrrp_peers: list[str] | None
) -> None:
    ns = make_netns("c")
    snap = snapshot(snat=snat) if vrrp_peers is None else vrrp_snapshot(snat=snat)
    body = plan_connector(
        snap, interface="zg0", listen_port=LISTEN_PORT, strict=True, vrrp_peers=vrrp_peers or ()
    ).nft_body
    load(ns, body)
    first = ns.run("nft", "list", "table", "inet", "zerogate").stdout
    load(ns, body)
    assert ns.run("nft", "list", "table", "inet", "zerogate").stdout == first
    assert ("chain postrouting" in first) == snat
    without_gateway = plan_connector(
        snapshot(snat=snat, gateways=[]), interface="zg0", listen_port=1, strict=snat
    ).nft_body
    load(ns, without_gateway)


@needs_root_nft
@pytest.mark.parametrize(
    "subnets",
    [["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32"], []],
    ids=["overlapping-subnets", "no-subnets"],
)
def test_edge_case_groups_load(make_netns: Callable[[str], Netns], subnets: list[str]) -> None:
    ns = make_netns("e")
    snap = wire()
    snap["connector_group"]["subnets"] = subnets
    snap["client_blocks"] = ["100.64.0.0/16", "100.64.0.0/10"]
    body = plan_connector(
        parse_snapshot("connector", snap), interface="zg0", listen_port=LISTEN_PORT, strict=True
    ).nft_body
    load(ns, body)
    load(ns, body)


# Real packets. The "tunnel" is a veth named like the WireGuard interface; the
# namespace on its far side stands for the gateway and its clients.
#
#   tun ns  t0 100.64.0.1 (gateway), 100.64.0.2 (client), 192.168.50.9 (spoofed)
#       ── zgcn 100.64.255.1/16 ┐ connector ns ┌ l0 192.168.202.1/24 ── h0 192.168.202.10  lan ns
#                                                 (the lan ns also holds 10.9.0.5: a subnet nobody fronts)
#                               │              └ o0 198.51.100.1/24 ── x0 198.51.100.2  oth ns
#                                                 (another network the host routes for, e.g. Docker's)


@pytest.fixture
def site(make_netns: Callable[[str], Netns]) -> dict[str, Netns]:
    tun, cn, lan, oth = make_netns("tn"), make_netns("cn"), make_netns("ln"), make_netns("ot")
    cn.ip("link", "add", "zgcn", "type", "veth", "peer", "name", "t0", "netns", tun.name)
    cn.ip("link", "add", "l0", "type", "veth", "peer", "name", "h0", "netns", lan.name)
    cn.ip("link", "add", "o0", "type", "veth", "peer", "name", "x0", "netns", oth.name)
    for ns, dev, addr in [
        (cn, "zgcn", "100.64.255.1/16"),
        (cn, "l0", "192.168.202.1/24"),
        (tun, "t0", "100.64.0.1/16"),
        (tun, "t0", "100.64.0.2/16"),
        (tun, "t0", "192.168.50.9/24"),
        (lan, "h0", "192.168.202.10/24"),
        (lan, "lo", "10.9.0.5/32"),
        (cn, "o0", "198.51.100.1/24"),
        (oth, "x0", "198.51.100.2/24"),
    ]:
        ns.ip("addr", "add", addr, "dev", dev)
    for ns, dev in [(cn, "zgcn"), (cn, "l0"), (tun, "t0"), (lan, "h0"), (cn, "o0"), (oth, "x0")]:
        ns.ip("link", "set", dev, "up")
    tun.ip("route", "add", "default", "via", "100.64.255.1")
    cn.ip("route", "add", "10.9.0.0/24", "via", "192.168.202.10")
    cn.ip("route", "add", "192.168.50.0/24", "dev", "zgcn")
    lan.ip("route", "add", "default", "via", "192.168.202.1")
    oth.ip("route", "add", "default", "via", "198.51.100.1")
    cn.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return {"tun": tun, "cn": cn, "lan": lan, "oth": oth}


def ping(src_ns: Netns, src: str, dst: str) -> bool:
    return src_ns.run("ping", "-c", "1", "-W", "1", "-I", src, dst, check=False).returncode == 0


@needs_root_nft
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "shared"])
def test_real_packets_reach_only_the_fronted_subnets_with_and_without_snat(
    site: dict[str, Netns], strict: bool
) -> None:
    tun, cn, lan = site["tun"], site["cn"], site["lan"]
    client, gateway, spoofed = "100.64.0.2", "100.64.0.1", "192.168.50.9"
    snap = wire(snat=True)
    snap["connector_group"]["subnets"] = ["192.168.202.0/24"]
    assert tcp(tun, client, lan, "10.9.0.5", 80) == client  # the topology forwards without our table

    load(
        cn,
        plan_connector(
            parse_snapshot("connector", snap), interface="zgcn", listen_port=LISTEN_PORT, strict=strict
        ).nft_body,
    )
    assert tcp(tun, client, lan, "192.168.202.10", 80) == "192.168.202.1"  # SNAT: the app sees the connector
    assert tcp(tun, client, lan, "10.9.0.5", 80) == "dropped"  # not a fronted subnet
    assert tcp(tun, spoofed, lan, "192.168.202.10", 80) == "dropped"  # not a client address
    assert tcp(tun, client, cn, "100.64.255.1", 22) == "dropped"  # the connector host itself
    assert tcp(lan, "192.168.202.10", tun, client, 7000) == "dropped"  # the LAN opens nothing into the tunnel
    assert ping(tun, gateway, "100.64.255.1")  # the gateway's liveness probe is answered
    assert not ping(tun, client, "100.64.255.1")

    snap["connector_group"]["snat"] = False
    load(
        cn,
        plan_connector(
            parse_snapshot("connector", snap), interface="zgcn", listen_port=LISTEN_PORT, strict=strict
        ).nft_body,
    )
    assert tcp(tun, client, lan, "192.168.202.10", 80) == client  # SNAT off: the app sees the client


@needs_root_nft
def test_strict_mode_forwards_nothing_else_and_shared_mode_keeps_the_hosts_own_forwarding(
    site: dict[str, Netns],
) -> None:
    cn, lan, oth = site["cn"], site["lan"], site["oth"]
    snap = wire(snat=False)
    snap["connector_group"]["subnets"] = ["192.168.202.0/24"]
    other, unfronted, fronted = "198.51.100.2", "10.9.0.5", "192.168.202.10"
    assert tcp(lan, unfronted, oth, other, 80) == unfronted  # the host routes between them on its own

    load(
        cn,
        plan_connector(
            parse_snapshot("connector", snap), interface="zgcn", listen_port=LISTEN_PORT, strict=True
        ).nft_body,
    )
    assert tcp(lan, unfronted, oth, other, 80) == "dropped"
    assert tcp(oth, other, lan, unfronted, 80) == "dropped"

    load(
        cn,
        plan_connector(
            parse_snapshot("connector", snap), interface="zgcn", listen_port=LISTEN_PORT, strict=False
        ).nft_body,
    )
    assert tcp(lan, unfronted, oth, other, 80) == unfronted  # not ours: the host's own forwarding stays
    assert tcp(oth, other, lan, unfronted, 80) == other
    assert tcp(oth, other, lan, fronted, 80) == "dropped"  # the fronted subnets: only via the tunnel
    assert tcp(lan, fronted, oth, other, 80) == "dropped"


# --------------------------------------------------------------------------- failover and VRRP (pure)

FAILED_OVER = (
    'oifname "zg0" ip saddr @fronted ip daddr @clients tcp flags & (syn | ack) == ack accept '
    'comment "continues a flow opened via another connector; the gateway admits only flows clients opened"'
)
VIP = "192.168.202.100"


def vrrp_snapshot(snat: bool = True, vip: str = VIP) -> ConnectorSnapshot:
    snap = wire(snat)
    snap["connector_group"]["vrrp_virtual_ip"] = vip
    return parse_snapshot("connector", snap)


def test_snat_off_lets_the_lan_continue_a_tcp_flow_to_a_client_but_never_open_one() -> None:
    off = plan_connector(snapshot(snat=False), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    on = plan_connector(snapshot(snat=True), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    lines = [line.strip() for line in off.splitlines()]
    # right after the replies, before the shared mode's drops; only ACK without SYN
    assert lines[lines.index('oifname "zg0" ct state established,related accept') + 1] == FAILED_OVER
    assert (
        FAILED_OVER not in on
    )  # with SNAT a failed-over flow cannot continue: the app answers the old address


def test_a_group_with_a_virtual_ip_admits_multicast_vrrp_from_its_subnet_only() -> None:
    body = plan_connector(vrrp_snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    input_ = body.split("  chain input {\n")[1].split("  }\n")[0]
    assert input_.splitlines()[-2:] == [
        "    ip saddr 192.168.202.0/24 ip daddr 224.0.0.18 ip ttl 255 ip protocol 112 accept "
        'comment "VRRP multicast from the virtual IP subnet, same link (TTL 255)"',
        '    ip protocol 112 drop comment "VRRP from anyone else: it could take the virtual IP"',
    ]
    assert (
        "ip protocol 112"
        not in plan_connector(
            snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=True, vrrp_peers=["192.168.202.2"]
        ).nft_body
    )  # no virtual IP: no VRRP rules, whatever the settings say


def test_the_multicast_source_is_the_most_specific_subnet_holding_the_virtual_ip() -> None:
    snap = wire()
    snap["connector_group"] |= {"subnets": ["10.0.0.0/8"], "vrrp_virtual_ip": "10.1.2.3"}
    body = plan_connector(
        parse_snapshot("connector", snap), interface="zg0", listen_port=1, strict=True
    ).nft_body
    assert "ip saddr 10.0.0.0/8 ip daddr 224.0.0.18 ip ttl 255 ip protocol 112 accept" in body


def test_unicast_vrrp_peers_replace_multicast() -> None:
    body = plan_connector(
        vrrp_snapshot(),
        interface="zg0",
        listen_port=LISTEN_PORT,
        strict=True,
        vrrp_peers=["192.168.202.3", "192.168.202.2", "192.168.202.3"],
    ).nft_body
    assert (
        '    ip saddr { 192.168.202.2, 192.168.202.3 } ip protocol 112 accept comment "VRRP from the unicast '
        'peers of this group"\n    ip protocol 112 drop comment "VRRP from anyone else: it could take the '
        'virtual IP"\n  }\n'
    ) in body
    assert "224.0.0.18" not in body


@pytest.mark.parametrize(
    "peers", [["192.168.202.2/24"], ["192.168.202.2 } accept"], ["fe80::1"], ["10.0.0.1"] * 17]
)
def test_a_bad_vrrp_peer_is_refused_without_echoing_it(peers: list[str]) -> None:
    with pytest.raises(ValueError, match="vrrp_peers") as err:
        plan_connector(vrrp_snapshot(), interface="zg0", listen_port=1, strict=True, vrrp_peers=peers)
    assert peers[0] not in str(err.value)


def test_snat_with_a_virtual_ip_translates_to_it_instead_of_masquerading() -> None:
    body = plan_connector(vrrp_snapshot(), interface="zg0", listen_port=LISTEN_PORT, strict=True).nft_body
    assert body.endswith(
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname != "zg0" ip saddr @clients ip daddr @fronted snat ip to {VIP}\n'
        "  }\n"
    )
    assert "masquerade" not in body
    off = plan_connector(vrrp_snapshot(snat=False), interface="zg0", listen_port=1, strict=True).nft_body
    assert "postrouting" not in off and FAILED_OVER in off


# --------------------------------------------------------------------------- failover and VRRP (namespaces)


@needs_root_nft
@pytest.mark.parametrize(
    ("strict", "loose"), [(True, 1), (False, 1), (True, 0)], ids=["strict", "shared", "strict-not-loose"]
)
def test_with_snat_off_the_lan_continues_a_failed_over_flow_but_opens_nothing(
    site: dict[str, Netns], strict: bool, loose: int
) -> None:
    """``loose``: nf_conntrack_tcp_loose. At 0 the kernel does not pick up a flow mid-stream
    and marks the segment invalid; the rule has no ct state match, so it still passes."""
    tun, cn, lan = site["tun"], site["cn"], site["lan"]
    cn.run("sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_loose={loose}")
    client, app = "100.64.0.2", "192.168.202.10"
    snap = wire(snat=True)
    snap["connector_group"]["subnets"] = ["192.168.202.0/24"]
    table = {
        snat: plan_connector(
            parse_snapshot("connector", snap | {"connector_group": snap["connector_group"] | {"snat": snat}}),
            interface="zgcn",
            listen_port=LISTEN_PORT,
            strict=strict,
        ).nft_body
        for snat in (True, False)
    }
    # (flags, destination, port): segments a server sends when continuing a flow, and
    # what would open one or end one; the last goes to an address that is no client
    cases = [
        ("ack", client, 7001),
        ("psh|ack", client, 7002),
        ("syn", client, 7003),
        ("syn|ack", client, 7004),
        ("rst", client, 7005),
        ("ack", "192.168.50.9", 7006),
    ]
    probe = Counters(cn, "forward", [f"tcp dport {port}" for _, _, port in cases])

    def send_all() -> None:
        for flags, dst, port in cases:
            send_tcp_segment(lan.name, app, dst, port, flags)

    load(cn, table[True])  # SNAT on: nothing from the LAN enters the tunnel unless it is a reply
    send_all()
    assert probe.passed_once_seen(1) == [0, 0, 0, 0, 0, 0]

    load(cn, table[False])  # SNAT off: segments that continue a flow to a client pass, nothing else
    send_all()
    assert probe.passed_once_seen(2) == [1, 1, 0, 0, 0, 0]
    assert tcp(lan, app, tun, client, 7000) == "dropped"  # a new connection from the LAN: still none
    assert tcp(tun, client, lan, app, 80) == client  # the client's own flows work as before


def send_vrrp(ns: str, src: str, dst: str, ttl: int) -> None:
    """One IP protocol 112 packet (the body is not parsed here; nothing runs keepalived)."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, 112) as s:
            s.bind((src, 0))
            if dst == "224.0.0.18":
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("192.168.202.10"))
            else:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.sendto(b"\x31\x07\x64\x01\x00\x64\x00\x00", (dst, 0))

    call_in_netns(ns, send)


@needs_root_nft
@pytest.mark.parametrize("peers", [[], ["192.168.202.11"]], ids=["multicast", "unicast"])
def test_vrrp_is_admitted_only_from_the_peers_or_the_link_and_dropped_from_anyone_else(
    site: dict[str, Netns], peers: list[str]
) -> None:
    cn, lan = site["cn"], site["lan"]
    group, me, peer, stranger, off_subnet = (
        "224.0.0.18",
        "192.168.202.1",
        "192.168.202.11",
        "192.168.202.12",
        "10.9.0.5",
    )
    for addr in (peer, stranger):
        lan.ip("addr", "add", f"{addr}/24", "dev", "h0")
    snap = wire(snat=True)
    snap["connector_group"] |= {"subnets": ["192.168.202.0/24"], "vrrp_virtual_ip": "192.168.202.100"}
    load(
        cn,
        plan_connector(
            parse_snapshot("connector", snap),
            interface="zgcn",
            listen_port=LISTEN_PORT,
            strict=True,
            vrrp_peers=peers,
        ).nft_body,
    )
    # what keepalived does: join the VRRP group on the LAN side (else the kernel discards the multicast)
    member = cn.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 112))
    member.setsockopt(
        socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(me)
    )
    cases = [  # source, destination, TTL
        (peer, group, 255),
        (peer, group, 64),  # multicast from another link (routed: TTL below 255)
        (off_subnet, group, 255),
        (stranger, group, 255),
        (peer, me, 64),
        (stranger, me, 255),
    ]
    probe = Counters(
        cn,
        "input",
        [f"ip saddr {src} ip daddr {dst} ip ttl {ttl} ip protocol 112" for src, dst, ttl in cases],
    )
    with member:
        for src, dst, ttl in cases:
            send_vrrp(lan.name, src, dst, ttl)
        passed = probe.passed_once_seen(1)
    if peers:  # unicast: the peer whatever its TTL or destination, nobody else
        assert passed == [1, 1, 0, 0, 1, 0]
    else:  # multicast: to the group, from the subnet, with TTL 255 only
        assert passed == [1, 0, 0, 1, 0, 0]
