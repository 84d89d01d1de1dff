"""Preflight and connectivity-test: pure checks fed with facts, the key-preflight
endpoint on a real controller, and the real command on this host, against a
probe responder playing the gateway, and inside a network namespace with no
way out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from tests.deploy.captured_firewall import NFT_DOCKER

from dbaccess import run_sql
from zerogate.cli.device import enroll_device
from zerogate.deploy.checks import Check, GatewayTarget
from zerogate.deploy.connectivity import check_install_string
from zerogate.deploy.hostfacts import Chain, FirewallFacts, HostFacts, parse_cpu_flags, parse_nft_chains
from zerogate.deploy.preflight import (
    check_aesni,
    check_arch,
    check_cores,
    check_disk,
    check_gateway_ports,
    check_mac,
    check_memory,
    check_proxy,
    check_root,
    check_systemd,
    firewall_checks,
    run_preflight,
)
from zerogate.deploy.proxyenv import read_proxy_env
from zerogate.deploy.sizing import host_minimum
from zerogate.netops.controller_api import ApiError, ControllerClient
from zerogate.netops.udp_probe import serve_probes
from zerogate.pki.ca import ca_pin, create_ca, create_csr, generate_private_key
from zerogate.pki.credentials import new_token
from zerogate.pki.install_string import InstallString
from zerogate.pki.wireguard import generate_keypair
from zerogate.testbed.localrun import AccountSession, LocalController, zerogate_argv

GIB = 1024**3
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def by_id(checks: list[Check] | list[dict[str, Any]]) -> dict[str, Any]:
    return {(c["id"] if isinstance(c, dict) else c.id): c for c in checks}


# ===========================================================================
# Pure checks, fed with facts
# ===========================================================================


def test_host_basics() -> None:
    assert check_arch("x86_64").status == "pass"
    arm = check_arch("aarch64")
    assert arm.status == "fail" and "aarch64" in arm.detail and "x86_64" in arm.fix
    assert check_systemd("systemd").status == "pass"
    other = check_systemd("process_api")
    assert other.status == "fail" and "PID 1 is 'process_api', not systemd" in other.detail
    assert "systemd" in other.fix and other.fix
    assert check_systemd(None).status == "fail"
    assert check_root(0).status == "pass"
    user = check_root(1000)
    assert user.status == "fail" and "uid 1000" in user.detail and "sudo" in user.fix


def test_cores_memory_and_disk_against_the_roles_sizing() -> None:
    conn = host_minimum("connector")  # minimum 1 core / 2 GB; recommended 2 cores / 4 GB, 64 GB disk
    assert check_cores(2, conn).status == "pass"
    one = check_cores(1, conn)
    assert one.status == "warn" and "zerogate sizing --role connector" in one.fix
    seg = host_minimum("segment")
    assert check_cores(1, seg).status == "fail" and "at least 2 cores" in check_cores(1, seg).fix
    # A "4 GB" VM reports a little less than 4 GiB: still a pass.
    assert check_memory(int(3.7 * GIB), conn).status == "pass"
    assert check_memory(int(2.5 * GIB), conn).status == "warn"
    low = check_memory(1 * GIB, conn)
    assert low.status == "fail" and "at least 2 GB" in low.fix
    assert check_memory(None, conn).status == "warn"
    assert check_disk("/var/lib", 50 * GIB, 100 * GIB, conn).status == "pass"
    small = check_disk("/var/lib", 10 * GIB, 20 * GIB, conn)
    assert small.status == "warn" and "64 GB disk" in small.fix
    full = check_disk("/var/lib", GIB // 2, 100 * GIB, conn)
    assert full.status == "fail" and "free at least 2 GB on /var/lib" in full.fix


def test_aes_ni_from_cpu_flags() -> None:
    cpuinfo = (
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme sse2 aes avx2\n\nprocessor\t: 1\n"
    )
    flags = parse_cpu_flags(cpuinfo)
    assert flags is not None and "aes" in flags
    assert check_aesni(flags).status == "pass"
    without = check_aesni(frozenset({"fpu", "sse2"}))
    assert without.status == "warn" and "ChaCha20" in without.detail and "host-passthrough" in without.fix
    assert check_aesni(parse_cpu_flags("processor: 0\n")).status == "warn"


def test_static_mac() -> None:
    assert check_mac("eth0", "00:16:3e:12:34:56").status == "pass"
    local = check_mac("eth0", "02:fc:00:00:00:01")
    assert local.status == "warn" and "locally administered" in local.detail
    assert "MACAddressPolicy=persistent" in local.fix
    assert check_mac(None, None).status == "warn" and "no default route" in check_mac(None, None).detail
    assert check_mac("ppp0", None).status == "warn"


def test_proxy_environment() -> None:
    none = read_proxy_env({})
    assert check_proxy(none, "ctl.example.test").status == "pass"
    env = read_proxy_env(
        {"HTTPS_PROXY": "http://user:secret@proxy.corp:3128", "NO_PROXY": ".internal,10.0.0.0/8"}
    )
    through = check_proxy(env, "ctl.example.test")
    assert through.status == "warn" and "goes through the proxy http://***@proxy.corp:3128" in through.detail
    assert "secret" not in through.detail + through.fix
    assert "add it to NO_PROXY and no_proxy" in through.fix
    assert check_proxy(env, "ctl.internal").status == "pass"  # domain suffix
    assert check_proxy(env, "10.1.2.3").status == "pass"  # CIDR
    assert "in NO_PROXY" in check_proxy(env, "10.1.2.3").detail
    # Lower-case spelling wins (as in Python and httpx), and disagreement is flagged.
    both = read_proxy_env({"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"})
    conflict = check_proxy(both, None)
    assert conflict.status == "warn" and "HTTPS_PROXY/https_proxy" in conflict.detail
    only_http = read_proxy_env({"http_proxy": "http://p:3128"})
    assert check_proxy(only_http, "ctl").status == "pass"


def test_gateway_ports() -> None:
    gw = GatewayTarget("gw1", "203.0.113.5", 51821, 51820, 53000)
    assert check_gateway_ports(frozenset({22}), gw).status == "pass"
    busy = check_gateway_ports(frozenset({51820}), gw)
    assert busy.status == "warn" and "51820 (WireGuard)" in busy.detail


def test_firewall_checks_say_what_would_be_blocked() -> None:
    clean = firewall_checks(FirewallFacts(), "connector")
    assert [c.status for c in clean] == ["pass"]
    facts = FirewallFacts(
        firewalld="running",
        ufw="active",
        chains=parse_nft_chains(NFT_DOCKER),
        legacy_rules=3,
        legacy_policies=0,
    )
    gw = GatewayTarget("gw1", "203.0.113.5", 51821, 51820, 53000)
    got = by_id(firewall_checks(facts, "gateway", gw))
    assert all(c.status == "warn" for c in got.values())
    assert "--add-port=51820-53000/udp --add-port=51821/udp" in got["firewalld"].fix
    assert "ufw allow 51820:53000/udp" in got["ufw"].fix
    assert "FORWARD policy to DROP" in got["docker"].detail
    assert "iptables -I DOCKER-USER -i zg-+ -j ACCEPT" in got["docker"].fix
    assert "3 rule(s)" in got["iptables-legacy"].detail
    inbound = got["policy:nftables:ip:filter:INPUT"]
    assert "blocks inbound UDP 51820-53000 (WireGuard) and 51821 (probe)" in inbound.detail
    assert "policy:nftables:ip:filter:FORWARD" in got
    # A connector only dials out: an input policy of drop is not its problem, forward is.
    conn = by_id(firewall_checks(facts, "connector"))
    assert "policy:nftables:ip:filter:INPUT" not in conn
    assert "forwarding from the tunnel" in conn["policy:nftables:ip:filter:FORWARD"].detail
    legacy_out = [Chain("iptables-legacy", "ip", "filter", "OUTPUT", "output", "drop")]
    out = by_id(firewall_checks(FirewallFacts(chains=tuple(legacy_out), legacy_policies=1), "connector"))
    assert (
        "iptables-legacy table filter chain OUTPUT" in out["policy:iptables-legacy:ip:filter:OUTPUT"].detail
    )


def test_run_preflight_on_supplied_facts_without_an_install_string(tmp_path: Path) -> None:
    facts = HostFacts(
        machine="x86_64",
        pid1="systemd",
        euid=0,
        cores=4,
        cpu_flags=frozenset({"aes"}),
        memory_bytes=8 * GIB,
        disk_path="/",
        disk_free_bytes=80 * GIB,
        disk_total_bytes=100 * GIB,
        default_iface="eth0",
        mac="00:16:3e:00:00:01",
    )
    checks = run_preflight("connector", None, tmp_path, {}, facts)
    statuses = {c.id: c.status for c in checks}
    assert statuses["network"] == "skip" and "--install-string" in by_id(checks)["network"].fix
    assert all(s in ("pass", "skip") for s in statuses.values()), statuses
    worse = run_preflight("connector", None, tmp_path, {}, replace(facts, pid1="init", cores=1))
    assert {c.id: c.status for c in worse}["systemd"] == "fail"


# ===========================================================================
# The key-preflight endpoint and the commands, against a real controller
# ===========================================================================


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything here talks to 127.0.0.1; a proxy from the developer's shell must not interfere.
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.upper() not in _PROXY_VARS}


_subnets = itertools.count(1)  # groups may not overlap: a fresh /24 for each (a random one collided)


def new_group(admin: AccountSession, unique: Callable[[str], str]) -> str:
    name = unique("pfgrp")
    n = next(_subnets)
    admin.client.post("/v1/connector-groups", {"name": name, "subnets": [f"10.77.{n // 256}.{n % 256}/32"]})
    return name


def new_key(admin: AccountSession, group: str, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = admin.client.post(f"/v1/connector-groups/{group}/provisioning-keys", body)
    return created


def key_row(admin: AccountSession, key_id: int) -> dict[str, Any]:
    return next(k for k in admin.client.get("/v1/provisioning-keys") if k["id"] == key_id)


def preflight_call(controller: LocalController, key: str) -> Any:
    with ControllerClient(controller.url, controller.ca_pem) as c:
        return c.post("/v1/enroll/preflight", {"key": key})


def preflight_error(controller: LocalController, key: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        preflight_call(controller, key)
    return info.value


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def enroll_gateway(
    controller: LocalController, admin: AccountSession, name: str, port_first: int
) -> tuple[bytes, bytes]:
    """Create and enroll a gateway on 127.0.0.1; returns its device (key, cert)."""
    admin.client.post(
        "/v1/gateways",
        {
            "name": name,
            "public_endpoint": "127.0.0.1",
            "port_first": port_first,
            "port_last": port_first + 10,
        },
    )
    created = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})
    key = generate_private_key()
    with ControllerClient(controller.url, controller.ca_pem) as c:
        r = c.post(
            "/v1/enroll",
            {
                "key": created["key"],
                "name": name,
                "csr": create_csr(key, name).decode(),
                "wg_public_key": generate_keypair()[1],
            },
        )
    return key, r["certificate"].encode()


@dataclass
class PlayedGateway:
    name: str
    probe_port: int


@pytest.fixture(scope="module")
def gateway(controller: LocalController, admin: AccountSession) -> Iterator[PlayedGateway]:
    """An enrolled gateway at 127.0.0.1 whose probe port is answered by a real responder."""
    for _ in range(20):
        probe_port = free_udp_port()
        if 2 <= probe_port <= 65525:
            break
    name = f"gw-pf-{uuid.uuid4().hex[:6]}"
    key, cert = enroll_gateway(controller, admin, name, probe_port - 1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    transport = asyncio.run_coroutine_threadsafe(
        serve_probes("127.0.0.1", probe_port, key, cert), loop
    ).result(10)
    try:
        yield PlayedGateway(name, probe_port)
    finally:
        loop.call_soon_threadsafe(transport.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        admin.client.delete(f"/v1/gateways/{name}")


def sql_past(controller: LocalController) -> str:
    return "now() - interval '1 minute'" if controller.database else "'2000-01-01 00:00:00.000000'"


def test_endpoint_reports_role_and_gateways_without_using_the_key(
    controller: LocalController,
    admin: AccountSession,
    unique: Callable[[str], str],
    gateway: PlayedGateway,
    tmp_path: Path,
) -> None:
    group = new_group(admin, unique)
    key = new_key(admin, group, max_uses=1)
    not_enrolled = unique("gw-idle")
    admin.client.post("/v1/gateways", {"name": not_enrolled, "public_endpoint": "127.0.0.3"})
    head = admin.client.get("/v1/audit/verify")["head_id"]
    try:
        for _ in range(3):
            answer = preflight_call(controller, key["key"])
        assert answer["role"] == "connector" and answer["connector_group"] == group
        assert answer["uses_left"] == 1 and answer["gateway"] is None
        gws = {g["name"]: g for g in answer["gateways"]}
        assert not_enrolled not in gws  # only gateways with an active device
        assert gws[gateway.name] == {
            "name": gateway.name,
            "endpoint": "127.0.0.1",
            "port_first": gateway.probe_port - 1,
            "port_last": gateway.probe_port + 9,
            "probe_port": gateway.probe_port,
        }
        # Nothing used up and nothing written.
        assert (key_row(admin, key["id"])["uses"], key_row(admin, key["id"])["state"]) == (0, "usable")
        assert admin.client.get("/v1/audit/verify")["head_id"] == head
        # The key still enrolls, exactly once.
        summary = enroll_device("connector", key["install_string"], unique("c"), tmp_path / "c", False)
        assert summary["role"] == "connector"
        used = preflight_error(controller, key["key"])
        assert (used.status, used.message) == (403, "provisioning key already used 1 of 1 times")
    finally:
        admin.client.delete(f"/v1/gateways/{not_enrolled}")


def test_endpoint_refuses_keys_exactly_like_enroll(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    group = new_group(admin, unique)
    unknown = preflight_error(controller, new_token("zgk"))
    assert unknown.status == 401 and "not recognised" in unknown.message

    revoked = new_key(admin, group)
    admin.client.delete(f"/v1/provisioning-keys/{revoked['id']}")
    err = preflight_error(controller, revoked["key"])
    assert err.status == 403 and "revoked" in err.message

    expired = new_key(admin, group)
    run_sql(
        controller,
        f"UPDATE provisioning_keys SET expires_at = {sql_past(controller)} WHERE id = {expired['id']}",
    )
    err2 = preflight_error(controller, expired["key"])
    assert err2.status == 403 and "expired" in err2.message

    used = new_key(admin, group)
    run_sql(controller, f"UPDATE provisioning_keys SET uses = max_uses WHERE id = {used['id']}")
    err3 = preflight_error(controller, used["key"])
    assert err3.status == 403 and "already used" in err3.message
    assert len({unknown.message, err.message, err2.message, err3.message}) == 4

    with ControllerClient(controller.url, controller.ca_pem) as c, pytest.raises(ApiError) as bad:
        c.post("/v1/enroll/preflight", {"key": "x"})
    assert bad.value.status == 422


def test_endpoint_tells_a_gateway_host_its_own_ports(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name = unique("gw-new")
    admin.client.post(
        "/v1/gateways",
        {"name": name, "public_endpoint": "127.0.0.2", "port_first": 40000, "port_last": 40100},
    )
    try:
        created = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})
        answer = preflight_call(controller, created["key"])
        assert answer["role"] == "gateway" and answer["connector_group"] is None
        assert answer["gateway"] == {
            "name": name, "endpoint": "127.0.0.2", "port_first": 40000, "port_last": 40100, "probe_port": 40001
        }  # fmt: skip
    finally:
        admin.client.delete(f"/v1/gateways/{name}")


def test_a_wrong_pin_is_reported_as_tls_interception(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    key = new_key(admin, new_group(admin, unique))
    other_pin = ca_pin(create_ca("Corporate Inspection Root")[1])
    s = InstallString(controller.url, other_pin, key["key"]).encode()
    report = check_install_string(s, "connector", {}, probe_udp=True)
    got = by_id(report.checks)
    assert got["tcp"].status == "pass"
    assert got["tls"].status == "fail" and got["tls"].detail.startswith("TLS interception suspected")
    assert "127.0.0.1 must bypass TLS inspection" in got["tls"].fix
    assert got["key"].status == "skip"
    assert got["udp"].status == "fail" and "cannot test UDP to the gateways" in got["udp"].detail


def test_a_connector_string_used_for_a_gateway_says_so(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], gateway: PlayedGateway
) -> None:
    key = new_key(admin, new_group(admin, unique))
    report = check_install_string(key["install_string"], "gateway", {}, probe_udp=False)
    got = by_id(report.checks)
    assert (
        got["key"].status == "fail"
        and got["key"].detail == "this install string enrolls a connector, not a gateway"
    )
    assert not any(c.id.startswith("udp") for c in report.checks)


def zerogate(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(Path(sys.executable).with_name("zerogate")), *args]
    if not Path(argv[0]).exists():
        argv = [*zerogate_argv(), *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean_env(), check=False)


def test_preflight_on_this_host_passes_the_network_checks(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], gateway: PlayedGateway
) -> None:
    key = new_key(admin, new_group(admin, unique))
    r = zerogate("preflight", "--role", "connector", "--install-string", key["install_string"])
    lines = r.stdout.splitlines()
    # This machine does not boot with systemd: that check fails, so the exit status is 1.
    assert r.returncode == 1, r.stdout + r.stderr
    systemd = next(line for line in lines if line.startswith("FAIL  systemd"))
    assert "not systemd" in systemd and "Fix: install on a host booted with systemd" in systemd
    for title in (
        "DNS resolution of the controller",
        "TCP",
        "TLS to the controller (pinned CA)",
        "provisioning key",
    ):
        assert any(line.startswith("PASS") and title in line for line in lines), (title, r.stdout)
    udp = next(line for line in lines if f"UDP to gateway {gateway.name}" in line)
    assert udp.startswith("PASS") and "proved its identity" in udp and " ms)" in udp
    assert "connector: not ready" in r.stdout

    j = zerogate("preflight", "--role", "connector", "--install-string", key["install_string"], "--json")
    assert j.returncode == 1
    data = json.loads(j.stdout)
    got = by_id(data["checks"])
    assert data["ok"] is False and got["systemd"]["status"] == "fail"
    for check in ("install-string", "dns", "tcp", "tls", "key", f"udp:{gateway.name}", "arch", "root"):
        assert got[check]["status"] == "pass", got[check]
    assert got["tcp"]["latency_ms"] > 0 and got[f"udp:{gateway.name}"]["latency_ms"] > 0
    assert [c["id"] for c in data["checks"] if c["status"] == "fail"] == ["systemd"]
    # The preflight did not use the key.
    assert key_row(admin, key["id"])["uses"] == 0


def test_preflight_for_a_gateway_host_checks_its_own_ports(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str]
) -> None:
    name = unique("gw-host")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:  # something already on the WireGuard port
        held.bind(("127.0.0.1", 0))
        first = held.getsockname()[1]
        assert first + 10 <= 65535
        admin.client.post(
            "/v1/gateways",
            {"name": name, "public_endpoint": "127.0.0.2", "port_first": first, "port_last": first + 10},
        )
        try:
            created = admin.client.post(f"/v1/gateways/{name}/provisioning-keys", {})
            r = zerogate(
                "preflight", "--role", "gateway", "--install-string", created["install_string"], "--json"
            )
        finally:
            admin.client.delete(f"/v1/gateways/{name}")
    checks = json.loads(r.stdout)["checks"]
    got = by_id(checks)
    assert got["key"]["status"] == "pass" and f"enrolls into gateway {name}" in got["key"]["detail"]
    assert got["ports"]["status"] == "warn"
    assert got["ports"]["detail"] == f"UDP {first} (WireGuard) already in use on this host"
    assert not any(c["id"].startswith("udp") for c in checks)  # a gateway does not probe gateways


def test_preflight_refuses_an_install_string_for_a_controller() -> None:
    r = zerogate("preflight", "--role", "controller", "--install-string", "zg1.x")
    assert r.returncode == 2 and "a controller is not enrolled with an install string" in r.stderr


@pytest.fixture
def isolated_netns() -> Iterator[str]:
    """A network namespace with only loopback: no route anywhere."""
    name = f"zgpf{os.getpid()}{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_preflight_with_no_route_out_fails_dns_tcp_and_udp_with_the_reason(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], isolated_netns: str
) -> None:
    key = new_key(admin, new_group(admin, unique))
    # The same deployment, but named: this namespace cannot reach any DNS server.
    named = InstallString(
        f"https://controller.zerogate.test:{controller.port}", controller.ca_pin, key["key"]
    ).encode()
    r = zerogate(
        "preflight", "--role", "connector", "--install-string", named, "--json", netns=isolated_netns
    )
    assert r.returncode == 1, r.stderr
    got = by_id(json.loads(r.stdout)["checks"])
    assert got["dns"]["status"] == "fail"
    assert got["dns"]["detail"].startswith("cannot resolve controller.zerogate.test:")
    assert "/etc/resolv.conf" in got["dns"]["fix"]
    assert got["tcp"]["status"] == "fail" and "does not resolve" in got["tcp"]["detail"]
    assert got["tls"]["status"] == "skip" and got["key"]["status"] == "skip"
    assert got["udp"]["status"] == "fail" and "cannot test UDP to the gateways" in got["udp"]["detail"]
    assert got["mac"]["status"] == "warn" and "no default route" in got["mac"]["detail"]

    # By address: DNS is not needed, but there is no route to it.
    by_address = InstallString("https://192.0.2.1", controller.ca_pin, key["key"]).encode()
    r = zerogate(
        "preflight", "--role", "connector", "--install-string", by_address, "--json", netns=isolated_netns
    )
    assert r.returncode == 1
    got = by_id(json.loads(r.stdout)["checks"])
    assert got["dns"]["status"] == "pass" and "no DNS lookup needed" in got["dns"]["detail"]
    assert got["tcp"]["status"] == "fail" and got["tcp"]["detail"].startswith("no route to 192.0.2.1:443")
    assert "default gateway" in got["tcp"]["fix"]
    assert got["udp"]["status"] == "fail"
    assert key_row(admin, key["id"])["uses"] == 0


def test_preflight_sees_docker_legacy_iptables_and_dropping_chains(isolated_netns: str) -> None:
    ns = isolated_netns
    rules = (
        "table ip filter {\n"
        "  chain INPUT { type filter hook input priority 0; policy drop; }\n"
        "  chain FORWARD { type filter hook forward priority 0; policy drop; }\n"
        "  chain DOCKER { }\n  chain DOCKER-USER { }\n}\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "22",
            "-j",
            "ACCEPT",
        ],
        check=True,
    )
    r = zerogate("preflight", "--role", "gateway", "--json", netns=ns)
    got = by_id(json.loads(r.stdout)["checks"])
    assert got["docker"]["status"] == "warn" and "DOCKER-USER" in got["docker"]["detail"]
    assert "1 rule(s)" in got["iptables-legacy"]["detail"]
    inbound = got["policy:nftables:ip:filter:INPUT"]
    assert inbound["status"] == "warn" and "inbound UDP on the gateway's port range" in inbound["detail"]
    assert "policy:nftables:ip:filter:FORWARD" in got
    assert got["network"]["status"] == "skip"


# ---------------------------------------------------------------------------- connectivity-test


def test_connectivity_test_of_an_enrolled_connector(
    controller: LocalController,
    admin: AccountSession,
    unique: Callable[[str], str],
    gateway: PlayedGateway,
    tmp_path: Path,
) -> None:
    key = new_key(admin, new_group(admin, unique))
    state = tmp_path / "connector"
    summary = enroll_device("connector", key["install_string"], unique("c"), state, False)
    r = zerogate("connectivity-test", "--state-dir", str(state), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    results = by_id(json.loads(r.stdout)["results"])
    for check in ("state", "dns", "tcp", "tls", "credential", f"udp:{gateway.name}"):
        assert results[check]["status"] == "pass", results[check]
    assert results["tcp"]["endpoint"] == f"127.0.0.1:{controller.port}"
    assert results[f"udp:{gateway.name}"]["endpoint"] == f"127.0.0.1:{gateway.probe_port}/udp"
    assert results["tls"]["latency_ms"] > 0
    table = zerogate("connectivity-test", "--state-dir", str(state))
    assert table.returncode == 0 and "zerogate connectivity: connector" in table.stdout

    # A gateway whose daemon is not running, then a revoked connector.
    dead = unique("gw-dead")
    enroll_gateway(controller, admin, dead, free_udp_port() - 1)
    try:
        r = zerogate("connectivity-test", "--state-dir", str(state), "--json")
        assert r.returncode == 1
        results = by_id(json.loads(r.stdout)["results"])
        assert results[f"udp:{gateway.name}"]["status"] == "pass"
        assert results[f"udp:{dead}"]["status"] == "fail"
        assert "nothing listens on UDP" in results[f"udp:{dead}"]["detail"]
        assert f"start the gateway daemon on {dead}" in results[f"udp:{dead}"]["fix"]
    finally:
        admin.client.delete(f"/v1/gateways/{dead}")
    admin.client.post(f"/v1/devices/{summary['device_id']}/revoke")
    r = zerogate("connectivity-test", "--state-dir", str(state), "--json")
    assert r.returncode == 1
    results = by_id(json.loads(r.stdout)["results"])
    assert results["credential"]["status"] == "fail" and "revoked" in results["credential"]["detail"]
    assert "re-enroll this connector" in results["credential"]["fix"]


def test_connectivity_test_without_an_enrollment_says_what_to_do(tmp_path: Path) -> None:
    r = zerogate("connectivity-test", "--role", "gateway", "--state-dir", str(tmp_path / "none"), "--json")
    assert r.returncode == 1
    state = by_id(json.loads(r.stdout)["results"])["state"]
    assert "no enrolled gateway in" in state["detail"] and "--install-string" in state["fix"]


def test_connectivity_test_with_an_install_string(
    controller: LocalController, admin: AccountSession, unique: Callable[[str], str], gateway: PlayedGateway
) -> None:
    key = new_key(admin, new_group(admin, unique))
    r = zerogate("connectivity-test", "--install-string", key["install_string"], "--json")
    assert r.returncode == 0, r.stdout
    results = by_id(json.loads(r.stdout)["results"])
    assert results["key"]["status"] == "pass" and results[f"udp:{gateway.name}"]["status"] == "pass"
