"""Preflight findings from the script's captured output (pure), and the asset's
addresses from ``ip -o addr``."""

from __future__ import annotations

import ipaddress

from zerogate.segment.hosts import parse_addresses
from zerogate.segment.preflight import parse_preflight, sections

SS = (
    'tcp LISTEN 0      128        10.99.0.2:22        0.0.0.0:* users:(("sshd",pid=101,fd=3))\n'
    'tcp LISTEN 0      128             [::]:2222         [::]:* users:(("sshd",pid=101,fd=4))\n'
    'tcp LISTEN 0      511          0.0.0.0:80        0.0.0.0:* users:(("nginx",pid=7,fd=6))\n'
)
CLEAN = f"@nft\ntable inet zerogate_learn\n@rc 0\n@conntrack\n@rc 0\n@ufw\n@rc 1\n@docker\n@rc 1\n@legacy\n@rc 0\n@ss\n{SS}@rc 0\n"
BUSY = (
    "@nft\ntable inet firewalld\ntable ip filter\ntable ip nat\n@rc 0\n@conntrack\n@rc 127\n"
    "@ufw\nENABLED=yes\n@rc 0\n@docker\n@rc 0\n@legacy\nfilter\nnat\n@rc 0\n@ss\n" + SS + "@rc 0\n"
)


def test_a_clean_host_passes_and_reports_sshds_real_ports() -> None:
    pf = parse_preflight(CLEAN, ssh_port=22)
    assert pf.ok and pf.ssh_ports == (22, 2222)
    assert [i.name for i in pf.items] == ["nftables", "conntrack", "sshd_ports"]
    assert {li.port for li in pf.listeners} == {22, 2222, 80}


def test_other_firewall_managers_are_named_with_what_they_mean() -> None:
    pf = parse_preflight(BUSY, ssh_port=22)
    found = {i.name: i for i in pf.items}
    assert not found["conntrack"].ok and "install 'conntrack'" in found["conntrack"].detail
    assert "reload" in found["firewalld"].detail and "ENABLED" not in found["ufw"].detail
    assert "forward, not input" in found["docker"].detail
    assert "ip filter, ip nat" in found["iptables_nft"].detail
    assert "filter, nat" in found["iptables_legacy"].detail
    assert pf.ok  # nftables works and SSH's port is sshd's: enforcement can go ahead, with warnings


def test_ssh_on_a_port_sshd_does_not_listen_on_blocks_enforcement() -> None:
    pf = parse_preflight(CLEAN, ssh_port=2200)
    sshd = next(i for i in pf.items if i.name == "sshd_ports")
    assert not sshd.ok and not pf.ok and "not on the asset's SSH port 2200" in sshd.detail


def test_a_cut_session_and_a_failing_nft_are_findings_not_crashes() -> None:
    pf = parse_preflight("@nft\nnft: command not found\n@rc 127\n@conntrack\n", ssh_port=22)
    found = {i.name: i for i in pf.items}
    assert not found["nftables"].ok and "command not found" in found["nftables"].detail
    assert not found["sshd_ports"].ok and pf.ssh_ports == ()
    assert sections("@a\nx\n@b\n") == {"a": ("x", -1), "b": ("", -1)}


def test_addresses_from_ip_addr() -> None:
    text = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: eth0    inet 10.99.0.2/16 scope global eth0\\       valid_lft forever\n"
        "2: eth0    inet6 fe80::1/64 scope link \\       valid_lft forever\n"
    )
    assert parse_addresses(text) == tuple(
        ipaddress.ip_address(a) for a in ("127.0.0.1", "10.99.0.2", "fe80::1")
    )
