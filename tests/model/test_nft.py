"""nftables text builders: the exact text of each idiom, hostile names and
comments refused before they reach a ruleset (so none can end its string and
add statements of its own), and tables built from them accepted by the real
``nft -c`` inside a namespace this test creates (nothing is loaded)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nstools import Netns
from zerogate.connector.plan import render_connector_nft
from zerogate.gateway.plan import render_gateway_table
from zerogate.model import nft
from zerogate.model.nft import NftTextError

needs_root_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and the Debian package nftables"
)

HOSTILE = [
    "",
    'zg0" accept',
    "x' y",
    "back\\slash",
    "two\nlines",
    "carriage\rreturn",
    "nul\x00byte",
    "tab\there",
    "zero\u200bwidth",
    "bidi\u202eoverride",
    "line\u2028separator",
]


def test_replace_table_declares_deletes_and_recreates_in_one_script() -> None:
    assert nft.replace_table("inet", "zerogate", "  chain c { }\n") == (
        "table inet zerogate {}\ndelete table inet zerogate\ntable inet zerogate {\n  chain c { }\n}\n"
    )
    assert nft.replace_table("inet", "zerogate_host", "", gap="\n") == (
        "table inet zerogate_host {}\ndelete table inet zerogate_host\n\ntable inet zerogate_host {\n}\n"
    )


@pytest.mark.parametrize(
    ("family", "name"),
    [("inet6", "zerogate"), ("inet", "zero gate"), ("inet", "zg; flush ruleset"), ("inet", "")],
)
def test_replace_table_refuses_a_bad_family_or_name(family: str, name: str) -> None:
    with pytest.raises(NftTextError):
        nft.replace_table(family, name, "")


def test_chain_with_base_line_and_conntrack_preamble() -> None:
    lines = [nft.base_chain("filter", "input", "filter", "drop"), *nft.conntrack_preamble("replies")]
    assert nft.chain("input", lines, indent="\t") == (
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy drop;\n"
        '\t\tct state established,related accept comment "replies"\n'
        "\t\tct state invalid drop\n"
        "\t}\n"
    )
    assert nft.conntrack_preamble() == ["ct state established,related accept", "ct state invalid drop"]
    assert nft.base_chain("nat", "postrouting", -100, "accept") == (
        "type nat hook postrouting priority -100; policy accept;"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("filter", "sideways", "filter", "accept"),
        ("filter", "input", "filter", "reject"),
        ("filter", "input", "filter; flush ruleset", "accept"),
        ("mangle", "input", "filter", "accept"),
    ],
)
def test_base_chain_refuses_words_nft_does_not_have(args: tuple[str, str, str, str]) -> None:
    with pytest.raises(NftTextError):
        nft.base_chain(*args)


def test_set_definitions() -> None:
    assert nft.set_definition("clients", "ipv4_addr") == "set clients { type ipv4_addr; }"
    assert nft.set_definition("fronted", "ipv4_addr", ["10.0.0.0/8"], interval=True, auto_merge=True) == (
        "set fronted { type ipv4_addr; flags interval; auto-merge; elements = { 10.0.0.0/8 }; }"
    )
    svc = nft.concat("ipv4_addr", "inet_proto", "inet_service")
    assert nft.set_definition(
        "p1_svc", svc, ["10.1.0.0-10.1.0.4 . tcp . 80", "10.1.0.5 . udp . 53"], interval=True
    ) == (
        "set p1_svc { type ipv4_addr . inet_proto . inet_service; flags interval; "
        "elements = { 10.1.0.0-10.1.0.4 . tcp . 80, 10.1.0.5 . udp . 53 }; }"
    )
    assert nft.element_update("add", "inet", "zerogate", "clients", ["100.64.0.2", "100.64.0.3"]) == (
        "add element inet zerogate clients { 100.64.0.2, 100.64.0.3 }"
    )
    with pytest.raises(NftTextError):
        nft.element_update("flush", "inet", "zerogate", "clients", ["100.64.0.2"])
    with pytest.raises(NftTextError):
        nft.set_definition("p1-src", "ipv4_addr")


def test_match_pieces() -> None:
    assert nft.iifname("zg0") == 'iifname "zg0"'
    assert nft.oifname("zg0", negate=True) == 'oifname != "zg0"'
    assert nft.iifname_in(["eth0", "eth1"]) == 'iifname { "eth0", "eth1" }'
    assert nft.address("ip", "saddr", nft.set_ref("clients"), negate=True) == "ip saddr != @clients"
    assert nft.address("ip6", "daddr", nft.one_or_set(["fd00::/64"])) == "ip6 daddr fd00::/64"
    assert nft.address("ip", "saddr", nft.anonymous_set(["100.64.0.1"])) == "ip saddr { 100.64.0.1 }"
    assert nft.port("udp", "dport", nft.port_range(51820, 53000)) == "udp dport 51820-53000"
    assert nft.port("tcp", "sport", nft.port_range(22, 22)) == "tcp sport 22"
    assert nft.l4proto("icmp") == "meta l4proto icmp"
    assert nft.icmp_type("icmpv6", ["nd-neighbor-solicit", "nd-neighbor-advert"]) == (
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"
    )
    assert nft.statement(nft.iifname("lo"), "", "accept", nft.comment("loopback")) == (
        'iifname "lo" accept comment "loopback"'
    )
    with pytest.raises(NftTextError):
        nft.address("ip", "saddr; flush ruleset", "10.0.0.1")
    with pytest.raises(NftTextError):
        nft.port("sctp", "dport", 1)


@pytest.mark.parametrize("text", HOSTILE, ids=repr)
def test_hostile_names_and_comments_are_refused(text: str) -> None:
    with pytest.raises(NftTextError):
        nft.comment(text)
    with pytest.raises(NftTextError):
        nft.iifname(text)
    with pytest.raises(NftTextError):
        nft.quoted(text)


def test_comment_and_interface_length_limits_are_nfts() -> None:
    assert nft.comment("a" * 128) == f'comment "{"a" * 128}"'
    with pytest.raises(NftTextError, match="128"):
        nft.comment("a" * 129)
    with pytest.raises(NftTextError, match="128"):
        nft.comment("é" * 65)  # 130 bytes
    assert nft.oifname("a" * 15) == f'oifname "{"a" * 15}"'
    with pytest.raises(NftTextError, match="15"):
        nft.oifname("a" * 16)


@given(st.text(max_size=40))
def test_quoted_text_never_ends_its_string_or_line(text: str) -> None:
    try:
        out = nft.quoted(text)
    except NftTextError:
        return
    assert out.count('"') == 2 and out[0] == out[-1] == '"'
    assert "\n" not in out and "\r" not in out and "'" not in out and "\\" not in out


@pytest.mark.parametrize("interface", ['zg0" accept', "zg\n0", "a-very-long-ifname"])
def test_planners_refuse_a_hostile_interface_name(interface: str) -> None:
    with pytest.raises(NftTextError):
        render_gateway_table(interface, ["100.64.0.2"], [])
    with pytest.raises(NftTextError):
        render_connector_nft(interface, 51830, ["100.64.0.0/16"], ["10.1.0.0/24"], [], True, strict=True)


def _sample_table() -> str:
    """Every builder at least once, in a table nft has to evaluate."""
    svc = nft.concat("ipv4_addr", "inet_proto", "inet_service")
    sets = [
        nft.set_definition("clients", "ipv4_addr", ["100.64.0.2", "100.64.0.3"]),
        nft.set_definition("empty", "ipv4_addr"),
        nft.set_definition("fronted", "ipv4_addr", ["10.1.0.0/24"], interval=True, auto_merge=True),
        nft.set_definition(
            "p1_svc", svc, ["10.1.0.0-10.1.0.4 . tcp . 80", "10.1.0.5 . udp . 53-60"], interval=True
        ),
    ]
    svc_key = nft.concat("ip daddr", nft.META_L4PROTO, "th dport")
    forward = [
        nft.base_chain("filter", "forward", "filter", "drop"),
        *nft.conntrack_preamble("replies to allowed connections"),
        nft.statement(
            nft.iifname("zg0"), nft.address("ip", "saddr", nft.set_ref("clients"), negate=True), "drop"
        ),
        nft.statement(
            nft.address("ip", "saddr", nft.set_ref("clients")), svc_key, nft.set_ref("p1_svc"), "accept"
        ),
        nft.statement(nft.iifname_in(["eth0", "eth1"]), nft.oifname("zg0"), "accept", nft.comment("x" * 128)),
        nft.statement(nft.address("ip6", "saddr", nft.one_or_set(["fd00::/64", "fd01::/64"])), "accept"),
        nft.statement(
            nft.port("tcp", "sport", 22), nft.port("tcp", "dport", nft.port_range(1024, 65535)), "accept"
        ),
        nft.statement(nft.icmp_type("icmpv6", ["nd-neighbor-solicit", "nd-neighbor-advert"]), "accept"),
        nft.statement(nft.l4proto("udp"), nft.ct_state("new"), "drop"),
    ]
    nat = [
        nft.base_chain("nat", "postrouting", "srcnat", "accept"),
        nft.statement(
            nft.oifname("zg0", negate=True), nft.address("ip", "daddr", nft.set_ref("fronted")), "masquerade"
        ),
    ]
    body = "".join(f"  {s}\n" for s in sets) + nft.chain("forward", forward) + nft.chain("postrouting", nat)
    return nft.replace_table("inet", "zerogate_t", body)


@needs_root_nft
def test_nft_accepts_tables_built_from_the_builders(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("nb")
    ns.run("nft", "-c", "-f", "-", input=_sample_table())
    table = render_gateway_table("zg0", ["100.64.0.2"], [])
    ns.run("nft", "-c", "-f", "-", input=nft.replace_table("inet", "zerogate", table.text))
    connector = render_connector_nft(
        "zg0", 51830, ["100.64.0.0/16"], ["10.1.0.0/24"], ["100.64.0.1"], True, strict=False
    )
    ns.run("nft", "-c", "-f", "-", input=nft.replace_table("inet", "zerogate", connector))
    # a check, not a load: the namespace still has no ruleset
    assert ns.run("nft", "list", "ruleset").stdout.strip() == ""


@needs_root_nft
def test_nft_refuses_what_the_builders_refuse(make_netns: Callable[[str], Netns]) -> None:
    """The limits are nft's own: one byte more and nft rejects the file."""
    ns = make_netns("nr")
    too_long = _sample_table().replace("x" * 128, "x" * 129)
    r = ns.run("nft", "-c", "-f", "-", input=too_long, check=False)
    assert r.returncode != 0 and "comment too long" in r.stderr
    long_if = _sample_table().replace('oifname "zg0" accept', 'oifname "abcdefghijklmnop" accept')
    r = ns.run("nft", "-c", "-f", "-", input=long_if, check=False)
    assert r.returncode != 0 and "exceeds maximum length" in r.stderr
