"""Host facts: the parsers of what a host exposes, on text captured from real hosts."""

from __future__ import annotations

from tests.deploy.captured_firewall import LEGACY_SAVE, NFT_DOCKER

from zerogate.deploy.hostfacts import (
    default_route_interface,
    parse_iptables_save,
    parse_mem_total,
    parse_nft_chains,
)


def test_memory_and_route_parsers_on_captured_text() -> None:
    assert parse_mem_total("MemTotal:       24684084 kB\nMemFree: 1 kB\n") == 24684084 * 1024
    assert parse_mem_total("nothing") is None
    route = (
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    assert default_route_interface(route) == "eth0"  # lowest metric wins
    v6 = (
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003     ens3\n"
    )
    assert default_route_interface(route.splitlines()[0] + "\n", v6) == "ens3"
    assert default_route_interface("Iface\tDestination\n") is None


def test_firewall_parsers_on_captured_output() -> None:
    chains = parse_nft_chains(NFT_DOCKER)
    assert [(c.name, c.hook, c.policy) for c in chains] == [
        ("INPUT", "input", "drop"),
        ("FORWARD", "forward", "drop"),
        ("DOCKER", None, None),
        ("DOCKER-USER", None, None),
    ]
    dump = parse_iptables_save(LEGACY_SAVE)
    assert dump.rules == 1
    assert [(c.table, c.name, c.hook, c.policy) for c in dump.chains] == [
        ("filter", "INPUT", "input", "accept"),
        ("filter", "FORWARD", "forward", "accept"),
        ("filter", "OUTPUT", "output", "drop"),
    ]
