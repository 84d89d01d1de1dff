"""The gateway's plan: peers, routes and the nftables policy for a snapshot.

Pure parts are checked directly (and the ruleset against a golden file); the
rendered table is then loaded with the real ``nft`` in a fresh network
namespace, and real packets are sent through it.

Regenerate the golden file with ``ZEROGATE_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns, tcp
from zerogate.gateway.plan import choose_active, plan_gateway, render_gateway_nft, render_gateway_table
from zerogate.model.dataplane import WgPeer
from zerogate.model.snapshot import ConnectorEntry, GatewayGrant, GatewaySnapshot, parse_snapshot
from zerogate.netops import nftables
from zerogate.netops.dataplane import Dataplane

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
needs_root_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and the Debian package nftables"
)


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat()


def key(n: int) -> str:
    """A distinct, well-formed WireGuard public key (32 bytes, base64)."""
    return f"{n:0>43}="


# The compiled policies as the controller has them (rules overlap freely); the
# snapshot carries them as GatewayGrant, cut into disjoint elements.
POLICIES: list[dict[str, Any]] = [
    {
        "policy_id": 7,
        "name": "web and ssh",
        "sources": ["100.64.0.12", "100.64.0.2", "100.64.0.3", "100.64.0.77"],
        "rules": [
            ["10.1.0.0/24", "tcp", 80, 80],
            ["10.1.0.0/24", "tcp", 443, 443],
            ["10.1.0.5/32", "tcp", 22, 22],  # inside the /24: must be cut out, not overlap
            ["10.1.0.5/32", "udp", 53, 53],
            ["10.1.0.0/25", "icmp", 0, 0],
            ["10.1.0.5/32", "icmp", 0, 0],  # already inside the /25
            ["fd00:1::/64", "tcp", 80, 80],  # the tunnel is IPv4 only: ignored
        ],
    },
    {
        "policy_id": 3,
        "name": "db admins",
        "sources": ["100.64.0.3"],
        "rules": [
            ["10.2.0.0/30", "any", 0, 65535],
            ["10.2.0.10/32", "any", 0, 65535],
            ["10.1.0.0/16", "udp", 5000, 5100],
            ["10.1.0.0/16", "udp", 5050, 6000],  # overlapping port ranges merge
        ],
    },
    {"policy_id": 9, "name": "nobody yet", "sources": [], "rules": [["10.9.0.0/24", "tcp", 1, 65535]]},
]


def grants(policies: list[dict[str, Any]]) -> list[GatewayGrant]:
    """What the controller puts into the snapshot for these policies."""
    return [
        GatewayGrant.from_rules(
            p["policy_id"], p.get("name", ""), p["sources"], [tuple(r) for r in p["rules"]]
        )
        for p in policies
    ]


GRANTS = grants(POLICIES)


def wire(**overrides: Any) -> dict[str, Any]:
    """The gateway snapshot as the controller sends it (JSON, parsed)."""
    snap: dict[str, Any] = {
        "schema_version": "1.0",
        "revision": 42,
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
            {
                "name": "cn-b",
                "device_id": 11,
                "wg_public_key": key(11),
                "address": "100.64.255.2",
                "connector_group": "site",
                "subnets": ["10.1.0.0/24", "10.2.0.0/24"],
            },
            {
                "name": "cn-a",
                "device_id": 10,
                "wg_public_key": key(10),
                "address": "100.64.255.1",
                "connector_group": "site",
                "subnets": ["10.1.0.0/24", "10.2.0.0/24"],
            },
            {
                "name": "cloud-1",
                "device_id": 12,
                "wg_public_key": key(12),
                "address": "100.64.255.3",
                "connector_group": "cloud",
                "subnets": ["172.31.0.0/16"],
            },
        ],
        "clients": [
            {
                "device_id": 20,
                "wg_public_key": key(20),
                "address": "100.64.0.2",
                "session_expires_at": at(3600),
            },
            {
                "device_id": 21,
                "wg_public_key": key(21),
                "address": "100.64.0.3",
                "session_expires_at": at(60),
            },
            {"device_id": 22, "wg_public_key": key(22), "address": "100.64.0.12", "session_expires_at": None},
            {
                "device_id": 23,
                "wg_public_key": key(23),
                "address": "100.64.0.77",
                "session_expires_at": at(-1),
            },
            {
                "device_id": 24,
                "wg_public_key": key(24),
                "address": "100.64.0.78",
                "session_expires_at": at(0),
            },
            {"device_id": 25, "wg_public_key": key(25), "address": None, "session_expires_at": None},
        ],
        "policy": {"grants": [g.model_dump(mode="json") for g in GRANTS], "valid_until": None},
    }
    return snap | overrides


def snapshot(**overrides: Any) -> GatewaySnapshot:
    return parse_snapshot("gateway", wire(**overrides))


# --------------------------------------------------------------------------- pure: choose_active


def connector(name: str, group: str) -> ConnectorEntry:
    return ConnectorEntry(
        name=name, device_id=1, wg_public_key=key(1), address=None, connector_group=group, subnets=()
    )


CONNECTORS = [
    connector("cn-c", "site"),
    connector("cn-a", "site"),
    connector("cn-b", "site"),
    connector("cloud-1", "cloud"),
]


def test_choose_active_keeps_the_current_connector_while_it_answers() -> None:
    got = choose_active(CONNECTORS, {"cn-a", "cn-b", "cn-c"}, {"site": "cn-c"})
    assert got["site"] == "cn-c"


def test_choose_active_fails_over_to_the_first_live_connector_by_name() -> None:
    assert choose_active(CONNECTORS, {"cn-c", "cn-b"}, {"site": "cn-a"})["site"] == "cn-b"
    assert choose_active(CONNECTORS, {"cn-c"}, {"site": "cn-a"})["site"] == "cn-c"


def test_choose_active_keeps_the_current_one_when_none_answers() -> None:
    assert choose_active(CONNECTORS, set(), {"site": "cn-b"})["site"] == "cn-b"


def test_choose_active_starts_with_the_first_by_name_so_traffic_can_flow_at_once() -> None:
    assert choose_active(CONNECTORS, set(), {}) == {"site": "cn-a", "cloud": "cloud-1"}
    # the current one was removed and nothing answers: first by name again
    assert choose_active(CONNECTORS, set(), {"site": "cn-gone"})["site"] == "cn-a"
    # a live one wins over a removed current one
    assert choose_active(CONNECTORS, {"cn-c"}, {"site": "cn-gone"})["site"] == "cn-c"


def test_a_vrrp_master_claim_overrides_the_probes_for_its_own_group_only() -> None:
    # cn-c claims: it carries site though cn-a is current and live, and even if no probe answered yet
    assert choose_active(CONNECTORS, {"cn-a", "cn-c"}, {"site": "cn-a"}, {"site": "cn-c"})["site"] == "cn-c"
    assert choose_active(CONNECTORS, set(), {"site": "cn-a"}, {"site": "cn-c"}) == {
        "site": "cn-c",
        "cloud": "cloud-1",
    }
    # a claimant that is not (or no longer) in the group counts for nothing
    assert choose_active(CONNECTORS, {"cn-a"}, {"site": "cn-a"}, {"site": "cloud-1"})["site"] == "cn-a"
    assert choose_active(CONNECTORS, {"cn-a"}, {"site": "cn-a"}, {"site": "cn-gone"})["site"] == "cn-a"
    # without claims: today's behaviour
    assert choose_active(CONNECTORS, {"cn-b"}, {"site": "cn-a"}, {}) == choose_active(
        CONNECTORS, {"cn-b"}, {"site": "cn-a"}
    )


def test_choose_active_decides_each_group_on_its_own() -> None:
    got = choose_active(CONNECTORS, {"cn-b"}, {"site": "cn-a", "cloud": "cloud-1"})
    assert got == {"site": "cn-b", "cloud": "cloud-1"}
    assert choose_active([], {"cn-a"}, {"site": "cn-a"}) == {}


# --------------------------------------------------------------------------- pure: plan_gateway


def test_expired_sessions_and_clients_without_an_address_get_no_peer() -> None:
    plan = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-a"})
    assert plan.live_clients == ("100.64.0.2", "100.64.0.3", "100.64.0.12")
    client_peers = {p.public_key: p for p in plan.peers if p.public_key in {key(n) for n in range(20, 26)}}
    assert set(client_peers) == {key(20), key(21), key(22)}
    assert client_peers[key(20)] == WgPeer(key(20), ("100.64.0.2/32",))
    # the expired clients are not in the nft client set either, though a grant still names one
    line = next(ln for ln in plan.nft_body.text.splitlines() if ln.strip().startswith("set clients "))
    elements = line.split("elements = {")[1].split("}")[0]
    assert sorted(e.strip() for e in elements.split(",")) == ["100.64.0.12", "100.64.0.2", "100.64.0.3"]


def test_next_expiry_is_the_earliest_live_session_end() -> None:
    plan = plan_gateway(snapshot(), interface="zg0", now=NOW, active={})
    assert plan.next_expiry == NOW + timedelta(seconds=60)
    later = plan_gateway(snapshot(), interface="zg0", now=NOW + timedelta(seconds=61), active={})
    assert later.next_expiry == NOW + timedelta(seconds=3600)
    assert "100.64.0.3" not in later.live_clients
    forever = snapshot(clients=[wire()["clients"][2]])
    assert plan_gateway(forever, interface="zg0", now=NOW, active={}).next_expiry is None


def test_the_active_connector_carries_the_subnets_and_the_others_only_their_address() -> None:
    plan = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-b", "cloud": "cloud-1"})
    peers = {p.public_key: p for p in plan.peers}
    assert peers[key(11)].allowed_ips == ("100.64.255.2/32", "10.1.0.0/24", "10.2.0.0/24")
    assert peers[key(10)].allowed_ips == ("100.64.255.1/32",)
    assert peers[key(12)].allowed_ips == ("100.64.255.3/32", "172.31.0.0/16")
    assert plan.routes == ("10.1.0.0/24", "10.2.0.0/24", "172.31.0.0/16")
    # connectors dial the gateway: no endpoint, no keepalive from this side
    assert all(p.endpoint is None and p.keepalive is None for p in plan.peers)
    # every subnet belongs to exactly one peer (WireGuard's allowed-IPs are a routing table)
    owned = [ip for p in plan.peers for ip in p.allowed_ips]
    assert len(owned) == len(set(owned))


def test_failing_over_moves_the_subnets_to_the_new_connector() -> None:
    before = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-a"})
    after = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-b"})
    old = {p.public_key: p.allowed_ips for p in before.peers}
    new = {p.public_key: p.allowed_ips for p in after.peers}
    assert "10.1.0.0/24" in old[key(10)] and "10.1.0.0/24" not in old[key(11)]
    assert "10.1.0.0/24" in new[key(11)] and "10.1.0.0/24" not in new[key(10)]
    # a group without an active connector routes nothing
    assert "172.31.0.0/16" not in before.routes


def test_listen_port_and_tunnel_addresses_come_from_the_snapshot() -> None:
    plan = plan_gateway(snapshot(), interface="zg0", now=NOW, active={})
    assert plan.listen_port == 51900
    assert plan.addresses == ("100.64.0.1/16",)
    empty: dict[str, Any] = {
        "gateway": None,
        "client_blocks": [],
        "tunnel_addresses": [],
        "connectors": [],
        "clients": [],
    }
    bare = plan_gateway(
        snapshot(**empty, policy={"grants": [], "valid_until": None}), interface="zg0", now=NOW, active={}
    )
    assert (bare.listen_port, bare.addresses, bare.peers, bare.routes) == (51820, (), (), ())


def test_nft_body_is_the_rendering_of_the_live_clients_and_grants() -> None:
    plan = plan_gateway(snapshot(), interface="zg0", now=NOW, active={})
    assert plan.nft_body.text == render_gateway_nft("zg0", list(plan.live_clients), GRANTS, ["100.64.0.1"])


def test_render_gateway_nft_matches_the_golden_file() -> None:
    body = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-a"}).nft_body.text
    path = GOLDEN / "gateway.nft"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(body)
    assert path.exists(), f"{path} missing: run with ZEROGATE_UPDATE_GOLDEN=1"
    assert body == path.read_text(), (
        f"{path.name} differs; if intended, regenerate with ZEROGATE_UPDATE_GOLDEN=1"
    )


def test_grant_order_and_source_order_do_not_change_the_ruleset() -> None:
    shuffled = [
        dict(g, sources=list(reversed(g["sources"])), rules=list(reversed(g["rules"]))) for g in POLICIES
    ]
    a = render_gateway_nft("zg0", ["100.64.0.2", "100.64.0.3"], GRANTS)
    b = render_gateway_nft("zg0", ["100.64.0.3", "100.64.0.2"], grants(list(reversed(shuffled))))
    assert a == b


def with_sources(pid: int, sources: list[str]) -> list[GatewayGrant]:
    return grants([p | {"sources": sources} if p["policy_id"] == pid else p for p in POLICIES])


def test_a_change_of_sources_or_live_clients_is_an_element_update() -> None:
    old = render_gateway_table("zg0", ["100.64.0.2", "100.64.0.3"], GRANTS)
    new = render_gateway_table(
        "zg0", ["100.64.0.3", "100.64.0.4"], with_sources(7, ["100.64.0.2", "100.64.0.9"])
    )
    script = nftables.update_script("inet", "zerogate", old, new)
    assert script == (
        "delete element inet zerogate clients { 100.64.0.2 }\n"
        "add element inet zerogate clients { 100.64.0.4 }\n"
        "delete element inet zerogate p7_src { 100.64.0.12, 100.64.0.3, 100.64.0.77 }\n"
        "add element inet zerogate p7_src { 100.64.0.9 }\n"
    )
    assert nftables.update_script("inet", "zerogate", new, new) == ""


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda g: [*g, {"policy_id": 11, "sources": ["100.64.0.2"], "rules": [["10.5.0.0/24", "tcp", 22, 22]]}], id="grant-added"),
        pytest.param(lambda g: [x for x in g if x["policy_id"] != 3], id="grant-removed"),
        pytest.param(lambda g: [x | {"rules": [["10.1.0.0/24", "tcp", 81, 81]]} if x["policy_id"] == 7 else x for x in g], id="destinations-changed"),
    ],
)  # fmt: skip
def test_a_change_of_rules_or_destinations_reloads_the_whole_table(change: Callable[[Any], Any]) -> None:
    old = render_gateway_table("zg0", ["100.64.0.2"], GRANTS)
    new = render_gateway_table("zg0", ["100.64.0.2"], grants(change(POLICIES)))
    assert nftables.update_script("inet", "zerogate", old, new) is None
    assert nftables.update_script("inet", "zerogate", None, new) is None


# --------------------------------------------------------------------------- namespaces


def load(ns: Netns, body: str) -> None:
    ns.run("nft", "-f", "-", input=nftables.replace_table_script("inet", nftables.TABLE, body))


@needs_root_nft
def test_the_rendered_table_loads_and_reloads_in_a_fresh_namespace(
    make_netns: Callable[[str], Netns],
) -> None:
    ns = make_netns("g")
    body = plan_gateway(snapshot(), interface="zg0", now=NOW, active={"site": "cn-a"}).nft_body.text
    load(ns, body)
    first = ns.run("nft", "list", "table", "inet", "zerogate").stdout
    load(ns, body)  # replacing the table is re-runnable
    assert ns.run("nft", "list", "table", "inet", "zerogate").stdout == first
    assert "set p7_svc" in first and "10.1.0.5 . tcp . 22" in first
    # a plan with nothing in it loads too (empty sets, no grant rules)
    load(ns, render_gateway_nft("zg0", [], []))
    listed = ns.run("nft", "list", "table", "inet", "zerogate").stdout
    assert "p7_svc" not in listed and "set clients" in listed


@needs_root_nft
def test_an_element_update_leaves_the_same_table_as_a_full_load(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("d")
    old = render_gateway_table("zg0", ["100.64.0.2", "100.64.0.3", "100.64.0.12"], GRANTS)
    new = render_gateway_table(
        "zg0", ["100.64.0.3", "100.64.0.4"], with_sources(7, ["100.64.0.4", "100.64.0.12"])
    )
    load(ns, new.text)
    want = ns.run("nft", "list", "table", "inet", "zerogate").stdout
    load(ns, old.text)
    script = nftables.update_script("inet", "zerogate", old, new)
    assert script
    ns.run("nft", "-f", "-", input=script)
    assert ns.run("nft", "list", "table", "inet", "zerogate").stdout == want


@needs_root_nft
def test_the_gateway_updates_elements_and_reloads_when_its_table_was_edited(
    make_netns: Callable[[str], Netns],
) -> None:
    ns = make_netns("u")
    dp = Dataplane("zgd0", "unused")  # only its nft table is used here
    lives = [
        ["100.64.0.2", "100.64.0.3"],
        ["100.64.0.3", "100.64.0.4"],
        ["100.64.0.4"],
        ["100.64.0.4", "100.64.0.5"],
    ]
    modes = []
    for i, live in enumerate(lives):
        table = render_gateway_table("zg0", live, GRANTS)
        ns.call(partial(dp._apply_table, table))
        modes.append(dp.last_nft_mode)
        if i == 1:  # someone removes an element behind our back
            ns.run("nft", "delete", "element", "inet", "zerogate", "clients", "{ 100.64.0.3 }")
    # first load, a diff, a diff that cannot delete what someone removed (so a reload), a diff
    assert modes == ["full", "elements", "full", "elements"]
    listed = ns.run("nft", "list", "set", "inet", "zerogate", "clients").stdout
    assert "100.64.0.4" in listed and "100.64.0.5" in listed and "100.64.0.3" not in listed


@needs_root_nft
def test_grants_spanning_the_whole_address_and_port_space_load(make_netns: Callable[[str], Netns]) -> None:
    wide = [
        {
            "policy_id": 1,
            "sources": ["100.64.0.2"],
            "rules": [
                ["0.0.0.0/0", "tcp", 0, 65535],
                ["0.0.0.0/0", "udp", 53, 53],
                ["10.0.0.1/32", "udp", 0, 65535],
                ["0.0.0.0/0", "icmp", 0, 0],
                ["255.255.255.255/32", "any", 0, 65535],
                ["0.0.0.0/1", "any", 0, 65535],
            ],
        }
    ]
    ns = make_netns("e")
    body = render_gateway_nft("zg0", ["100.64.0.2"], grants(wide))
    assert "0.0.0.0-255.255.255.255 . tcp . 0-65535" in body
    load(ns, body)
    load(ns, body)
    listed = ns.run("nft", "list", "set", "inet", "zerogate", "p1_svc").stdout
    assert "10.0.0.1 . udp . 0-65535" in listed


# Real packets: WireGuard puts clients and connectors on one interface; here two
# veths stand in for it (one to the clients, one to the LAN behind the connector),
# both matched by the interface pattern "zgt*", plus one non-tunnel interface.
#
#   client ns  c0 100.64.0.{2,3,12,99}/24 ── zgtc 100.64.0.1 ┐ gw ns ┌ zgtl 192.168.201.1 ── l0  lan ns
#                                                             └ wan0 198.18.0.1 ── o0 198.18.0.2  outside ns
#   lan ns holds 10.1.0.5, 10.1.0.200 and 10.2.0.10 on lo.


@pytest.fixture
def site(make_netns: Callable[[str], Netns]) -> dict[str, Netns]:
    gw, client, lan, out = make_netns("gw"), make_netns("cl"), make_netns("ln"), make_netns("ot")
    gw.ip("link", "add", "zgtc", "type", "veth", "peer", "name", "c0", "netns", client.name)
    gw.ip("link", "add", "zgtl", "type", "veth", "peer", "name", "l0", "netns", lan.name)
    gw.ip("link", "add", "wan0", "type", "veth", "peer", "name", "o0", "netns", out.name)
    for ns, dev, addr in [
        (gw, "zgtc", "100.64.0.1/24"),
        (gw, "zgtl", "192.168.201.1/24"),
        (gw, "wan0", "198.18.0.1/24"),
        (client, "c0", "100.64.0.2/24"),
        (client, "c0", "100.64.0.3/24"),
        (client, "c0", "100.64.0.12/24"),
        (client, "c0", "100.64.0.99/24"),
        (lan, "l0", "192.168.201.2/24"),
        (lan, "lo", "10.1.0.5/32"),
        (lan, "lo", "10.1.0.200/32"),
        (lan, "lo", "10.2.0.10/32"),
        (out, "o0", "198.18.0.2/24"),
    ]:
        ns.ip("addr", "add", addr, "dev", dev)
    for ns, dev in [(gw, "zgtc"), (gw, "zgtl"), (gw, "wan0"), (client, "c0"), (lan, "l0"), (out, "o0")]:
        ns.ip("link", "set", dev, "up")
    gw.ip("route", "add", "10.0.0.0/8", "via", "192.168.201.2")
    client.ip("route", "add", "default", "via", "100.64.0.1")
    lan.ip("route", "add", "default", "via", "192.168.201.1")
    out.ip("route", "add", "default", "via", "198.18.0.1")
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    return {"gw": gw, "client": client, "lan": lan, "out": out}


def udp(src_ns: Netns, src: str, dst_ns: Netns, dst: str, port: int) -> bool:
    server = dst_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client = src_ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with server, client:
        server.bind((dst, port))
        server.settimeout(0.5)
        client.bind((src, 0))
        client.sendto(b"hello", (dst, port))
        try:
            return server.recv(16) == b"hello"
        except TimeoutError:
            return False


def ping(src_ns: Netns, src: str, dst: str) -> bool:
    return src_ns.run("ping", "-c", "1", "-W", "1", "-I", src, dst, check=False).returncode == 0


@needs_root_nft
def test_real_packets_follow_the_grants(site: dict[str, Netns]) -> None:
    gw, client, lan, out = site["gw"], site["client"], site["lan"], site["out"]
    # without our table everything is forwarded: the topology itself works
    assert tcp(client, "100.64.0.99", lan, "10.2.0.10", 5432) == "100.64.0.99"
    plan = plan_gateway(snapshot(), interface="zgt*", now=NOW, active={"site": "cn-a"})
    load(gw, plan.nft_body.text)

    assert tcp(client, "100.64.0.2", lan, "10.1.0.5", 22) == "100.64.0.2"  # the host rule
    assert tcp(client, "100.64.0.2", lan, "10.1.0.200", 443) == "100.64.0.2"  # the subnet rule
    assert tcp(client, "100.64.0.12", lan, "10.1.0.5", 80) == "100.64.0.12"
    assert tcp(client, "100.64.0.2", lan, "10.1.0.200", 22) == "refused"  # ssh only to .5
    assert tcp(client, "100.64.0.2", lan, "10.2.0.10", 5432) == "refused"  # policy 3 is not for .2
    assert tcp(client, "100.64.0.3", lan, "10.2.0.10", 5432) == "100.64.0.3"  # policy 3: any protocol
    assert tcp(client, "100.64.0.99", lan, "10.1.0.5", 22) == "dropped"  # not a live client
    assert udp(client, "100.64.0.2", lan, "10.1.0.5", 53)
    assert not udp(client, "100.64.0.2", lan, "10.1.0.5", 54)
    assert udp(client, "100.64.0.3", lan, "10.1.0.200", 5999)  # the merged udp range
    assert ping(client, "100.64.0.2", "10.1.0.5")
    assert not ping(client, "100.64.0.2", "10.1.0.200")  # icmp only to the lower /25
    # nothing from outside the tunnel reaches a client, nor does the LAN open flows to one
    assert tcp(out, "198.18.0.2", client, "100.64.0.2", 7000) == "dropped"
    assert tcp(lan, "10.1.0.5", client, "100.64.0.2", 7000) == "dropped"


@needs_root_nft
def test_the_tunnel_reaches_the_gateway_itself_only_with_vrrp_state_to_its_tunnel_address(
    site: dict[str, Netns],
) -> None:
    gw, client, out = site["gw"], site["client"], site["out"]
    assert udp(client, "100.64.0.2", gw, "192.168.201.1", 3784)  # without our table: open
    plan = plan_gateway(snapshot(), interface="zgt*", now=NOW, active={"site": "cn-a"})
    load(gw, plan.nft_body.text)
    assert udp(client, "100.64.0.99", gw, "100.64.0.1", 3784)  # any tunnel peer: the receiver checks who
    assert not udp(client, "100.64.0.2", gw, "100.64.0.1", 3785)
    assert not udp(client, "100.64.0.2", gw, "192.168.201.1", 3784)  # not the tunnel address
    assert tcp(client, "100.64.0.2", gw, "100.64.0.1", 3784) == "dropped"
    assert udp(out, "198.18.0.2", gw, "198.18.0.1", 3784)  # the input chain leaves other interfaces alone
