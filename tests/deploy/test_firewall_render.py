"""``zerogate firewall render``: golden files for every valid role x format, each
output checked by the real tool that would load it (``nft -c``, a real
``iptables-restore`` in a throwaway namespace, ``firewall-offline-cmd
--check-config``, python-hcl2), cloud JSON against the documented shapes, real
traffic through loaded nftables rulesets between namespaces, and the CLI as a
user runs it.

Regenerate the golden files with ``ZEROGATE_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from zerogate.deploy.firewall import (
    CLOUD_FORMATS,
    FirewallSpec,
    FirewallSpecError,
    Format,
    Role,
    parse_spec,
    render,
    role_ruleset,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
ZEROGATE = str(Path(sys.executable).parent / "zerogate")
EXT = {
    Format.NFTABLES: "nft",
    Format.IPTABLES: "rules",
    Format.FIREWALLD: "firewalld.txt",
    Format.AWS_SG: "aws-sg.json",
    Format.AZURE_NSG: "azure-nsg.json",
    Format.TERRAFORM: "tf",
}
# Representative options per role (IPv6 included, to exercise family splitting).
CASES: dict[Role, dict[str, Any]] = {
    Role.GATEWAY: {"mgmt_cidrs": ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]},
    Role.CONNECTOR: {"subnets": ["10.1.0.0/24", "fd00:1::/64"], "mgmt_cidrs": ["192.0.2.10/32"]},
    Role.CLIENT: {"allow_ssh": True, "mgmt_cidrs": ["192.0.2.0/24"]},
    Role.CLOUD: {"mgmt_cidrs": ["192.0.2.0/24"], "subnets": ["10.20.0.0/16"], "controller_port": 8443},
}
VALID = [(r, f) for r in Role for f in Format if not (r is Role.CLIENT and f in CLOUD_FORMATS)]
AWS_TEXT = re.compile(r"[a-zA-Z0-9. _\-:/()#,@\[\]+=&;{}!$*]*")  # EC2 description characters


def spec_of(role: Role) -> FirewallSpec:
    return parse_spec(role, **CASES[role])


def ids(pair: tuple[Role, Format]) -> str:
    return f"{pair[0]}-{pair[1]}"


def run(
    *argv: str, check: bool = True, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    env = env or {**os.environ, "LC_ALL": "C"}
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------------- namespaces


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """make() -> name of a fresh network namespace; all are deleted after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"zgfr{os.getpid()}-{uuid.uuid4().hex[:6]}"
        run("ip", "netns", "add", name)
        made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def in_ns(ns: str, *argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check, **kw)


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("pair", VALID, ids=ids)
def test_golden(pair: tuple[Role, Format]) -> None:
    role, fmt = pair
    path = GOLDEN / f"{role}.{EXT[fmt]}"
    text = render(spec_of(role), fmt).text
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with ZEROGATE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{path.name} differs; if intended, regenerate with ZEROGATE_UPDATE_GOLDEN=1"
    )


def test_no_stale_golden_files() -> None:
    expected = {f"{r}.{EXT[f]}" for r, f in VALID}
    assert {p.name for p in GOLDEN.iterdir()} == expected


def test_rendering_is_deterministic() -> None:
    for role, fmt in VALID:
        assert render(spec_of(role), fmt) == render(spec_of(role), fmt)


# --------------------------------------------------------------------------- host formats, real tools


@pytest.mark.parametrize("role", list(Role))
def test_nftables_checks_loads_twice_and_leaves_other_tables(
    role: Role, netns: Callable[[], str], tmp_path: Path
) -> None:
    ns = netns()
    ruleset = tmp_path / "r.nft"
    ruleset.write_text(render(spec_of(role), Format.NFTABLES).text)
    in_ns(ns, "nft", "-c", "-f", str(ruleset))
    in_ns(ns, "nft", "add table inet other; add chain inet other c { type filter hook input priority 0; }")
    in_ns(ns, "nft", "-f", str(ruleset))
    first = in_ns(ns, "nft", "list", "table", "inet", "zerogate_host").stdout
    in_ns(ns, "nft", "-f", str(ruleset))  # re-runnable: replaces, does not add
    assert in_ns(ns, "nft", "list", "table", "inet", "zerogate_host").stdout == first
    tables = in_ns(ns, "nft", "list", "tables").stdout.split("\n")
    assert sorted(t for t in tables if t) == ["table inet other", "table inet zerogate_host"]
    assert "policy drop" in first


def test_nft_check_rejects_a_broken_file(netns: Callable[[], str], tmp_path: Path) -> None:
    """The validator used above can fail: a typo is caught."""
    ns = netns()
    broken = tmp_path / "b.nft"
    broken.write_text(render(spec_of(Role.GATEWAY), Format.NFTABLES).text.replace("dport 22", "dprot 22"))
    assert in_ns(ns, "nft", "-c", "-f", str(broken), check=False).returncode != 0


@pytest.mark.parametrize("role", list(Role))
def test_iptables_restore_loads_without_touching_other_rules(
    role: Role, netns: Callable[[], str], tmp_path: Path
) -> None:
    ns = netns()
    rules = tmp_path / "r.rules"
    rules.write_text(render(spec_of(role), Format.IPTABLES).text)
    in_ns(ns, "iptables", "-A", "INPUT", "-s", "203.0.113.9", "-j", "ACCEPT")
    in_ns(ns, "iptables-restore", "--test", "--noflush", str(rules))
    in_ns(ns, "iptables-restore", "--noflush", str(rules))
    in_ns(ns, "iptables-restore", "--noflush", str(rules))  # a reload refills our chains
    saved = in_ns(ns, "iptables-save").stdout
    assert "-A INPUT -s 203.0.113.9/32 -j ACCEPT" in saved
    assert ":INPUT ACCEPT" in saved  # built-in policy untouched
    chain = [line for line in saved.splitlines() if line.startswith("-A ZEROGATE-INPUT ")]
    assert chain[-1] == "-A ZEROGATE-INPUT -j DROP"
    assert len(chain) == len(set(chain)), "reloading must not duplicate the chain's rules"
    if role is Role.CLOUD:
        assert "-A ZEROGATE-PREROUTING -i eth0 -m rpfilter --invert" in saved


@pytest.mark.parametrize("role", list(Role))
def test_firewalld_offline_check_config(role: Role, tmp_path: Path) -> None:
    rendering = render(spec_of(role), Format.FIREWALLD)
    config = _firewalld_config(tmp_path, rendering.files)
    proc = run("firewall-offline-cmd", "--system-config", str(config), "--check-config", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in (proc.stdout + proc.stderr).lower()
    names = {name.split("/")[0] for name, _ in rendering.files}
    assert names <= {"zones", "policies"}


def test_firewalld_check_rejects_a_broken_file(tmp_path: Path) -> None:
    files = [
        (name, content.replace('protocol="udp"', 'protocol="udpx"'))
        for name, content in render(spec_of(Role.GATEWAY), Format.FIREWALLD).files
    ]
    assert any("udpx" in content for _, content in files)
    config = _firewalld_config(tmp_path, files)
    proc = run("firewall-offline-cmd", "--system-config", str(config), "--check-config", check=False)
    assert proc.returncode != 0


def _firewalld_config(base: Path, files: Any, default_zone: str = "public") -> Path:
    """A firewalld permanent configuration directory holding just these files."""
    config = base / "firewalld"
    for name, content in files:
        (config / name).parent.mkdir(parents=True, exist_ok=True)
        (config / name).write_text(content)
    (config / "firewalld.conf").write_text(f"DefaultZone={default_zone}\nFirewallBackend=nftables\n")
    return config


# --------------------------------------------------------------------------- cloud formats, documented shapes


def _check_cidr(text: Any, version: int) -> None:
    assert isinstance(text, str)
    assert ipaddress.ip_network(text, strict=True).version == version


def validate_aws(doc: dict[str, Any]) -> None:
    """EC2 DescribeSecurityGroups / AuthorizeSecurityGroupIngress IpPermissions shape."""
    assert set(doc) == {"SecurityGroups"} and doc["SecurityGroups"]
    for group in doc["SecurityGroups"]:
        assert set(group) == {"GroupName", "Description", "IpPermissions", "IpPermissionsEgress"}
        assert 0 < len(group["GroupName"]) <= 255 and not group["GroupName"].startswith("sg-")
        assert 0 < len(group["Description"]) <= 255 and AWS_TEXT.fullmatch(group["Description"])
        for perm in group["IpPermissions"] + group["IpPermissionsEgress"]:
            assert perm["IpProtocol"] in {"tcp", "udp", "-1"}
            if perm["IpProtocol"] == "-1":
                assert "FromPort" not in perm and "ToPort" not in perm
            else:
                assert isinstance(perm["FromPort"], int) and isinstance(perm["ToPort"], int)
                assert 0 <= perm["FromPort"] <= perm["ToPort"] <= 65535
            assert perm["IpRanges"] or perm["Ipv6Ranges"]
            for r in perm["IpRanges"]:
                assert set(r) == {"CidrIp", "Description"}
                _check_cidr(r["CidrIp"], 4)
                assert len(r["Description"]) <= 255 and AWS_TEXT.fullmatch(r["Description"]), r
            for r in perm["Ipv6Ranges"]:
                assert set(r) == {"CidrIpv6", "Description"}
                _check_cidr(r["CidrIpv6"], 6)
                assert len(r["Description"]) <= 255 and AWS_TEXT.fullmatch(r["Description"]), r


_AZ_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?")
_AZ_PORTS = re.compile(r"\*|\d{1,5}(?:-\d{1,5})?")


def _check_azure_prefix(text: Any) -> None:
    assert isinstance(text, str)
    if text != "*":
        ipaddress.ip_network(text, strict=True)


def validate_azure(doc: dict[str, Any]) -> None:
    """ARM template with Microsoft.Network/networkSecurityGroups and their securityRules."""
    assert doc["$schema"].startswith("https://schema.management.azure.com/schemas/")
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", doc["contentVersion"])
    assert doc["resources"]
    for res in doc["resources"]:
        assert res["type"] == "Microsoft.Network/networkSecurityGroups"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", res["apiVersion"])
        assert _AZ_NAME.fullmatch(res["name"]) and res["location"]
        rules = res["properties"]["securityRules"]
        priorities = [r["properties"]["priority"] for r in rules]
        assert len(priorities) == len(set(priorities)), "priorities must be unique"
        assert len({r["name"] for r in rules}) == len(rules)
        for rule in rules:
            assert _AZ_NAME.fullmatch(rule["name"]), rule["name"]
            p = rule["properties"]
            assert isinstance(p["priority"], int) and 100 <= p["priority"] <= 4096
            assert p["direction"] in {"Inbound", "Outbound"} and p["access"] in {"Allow", "Deny"}
            assert p["protocol"] in {"Tcp", "Udp", "Icmp", "Esp", "Ah", "*"}
            assert len(p.get("description", "")) <= 140
            for side in ("source", "destination"):
                one, many = f"{side}AddressPrefix", f"{side}AddressPrefixes"
                assert (one in p) != (many in p), f"exactly one of {one}/{many}"
                for prefix in [p[one]] if one in p else p[many]:
                    _check_azure_prefix(prefix)
                if many in p:
                    versions = {ipaddress.ip_network(x).version for x in p[many]}
                    assert len(versions) == 1 and len(p[many]) > 1
            assert ("destinationPortRange" in p) != ("destinationPortRanges" in p)
            for ports in [p.get("destinationPortRange", "*"), p["sourcePortRange"]]:
                assert _AZ_PORTS.fullmatch(ports)
                if ports != "*":
                    first, _, last = ports.partition("-")
                    assert 0 <= int(first) <= int(last or first) <= 65535
        # Allow rules must sit above (lower number than) the explicit deny-all of their direction.
        for direction in ("Inbound", "Outbound"):
            mine = [r["properties"] for r in rules if r["properties"]["direction"] == direction]
            deny = [p["priority"] for p in mine if p["access"] == "Deny"]
            assert len(deny) == 1 and all(p["priority"] < deny[0] for p in mine if p["access"] == "Allow")


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k != "__is_block__"}
    return value


def terraform_groups(text: str) -> dict[str, dict[str, Any]]:
    """Parse with python-hcl2 and check each aws_security_group; returns them by resource name."""
    doc = _unquote(hcl2.loads(text))
    assert doc["variable"] == [
        {"vpc_id": {"description": "VPC to create the security groups in", "type": "string"}}
    ]
    groups: dict[str, dict[str, Any]] = {}
    for res in doc["resource"]:
        assert set(res) == {"aws_security_group"}
        for name, body in res["aws_security_group"].items():
            assert body["vpc_id"] == "${var.vpc_id}" and body["name"] and body["description"]
            for kind in ("ingress", "egress"):
                for block in body[kind]:
                    assert block["protocol"] in {"tcp", "udp", "-1"}
                    assert 0 <= block["from_port"] <= block["to_port"] <= 65535
                    if block["protocol"] == "-1":
                        assert block["from_port"] == block["to_port"] == 0
                    assert block.get("cidr_blocks") or block.get("ipv6_cidr_blocks")
                    for c in block.get("cidr_blocks", []):
                        _check_cidr(c, 4)
                    for c in block.get("ipv6_cidr_blocks", []):
                        _check_cidr(c, 6)
                    assert AWS_TEXT.fullmatch(block["description"])
            groups[name] = body
    return groups


@pytest.mark.parametrize("role", [Role.GATEWAY, Role.CONNECTOR, Role.CLOUD])
def test_cloud_outputs_match_documented_shapes(role: Role) -> None:
    spec = spec_of(role)
    validate_aws(json.loads(render(spec, Format.AWS_SG).text))
    validate_azure(json.loads(render(spec, Format.AZURE_NSG).text))
    terraform_groups(render(spec, Format.TERRAFORM).text)


def test_shape_validators_can_fail() -> None:
    aws = json.loads(render(spec_of(Role.GATEWAY), Format.AWS_SG).text)
    aws["SecurityGroups"][0]["IpPermissions"][0]["ToPort"] = 70000
    with pytest.raises(AssertionError):
        validate_aws(aws)
    azure = json.loads(render(spec_of(Role.GATEWAY), Format.AZURE_NSG).text)
    rules = azure["resources"][0]["properties"]["securityRules"]
    rules[1]["properties"]["priority"] = rules[0]["properties"]["priority"]
    with pytest.raises(AssertionError):
        validate_azure(azure)
    with pytest.raises(AssertionError):
        terraform_groups(render(spec_of(Role.GATEWAY), Format.TERRAFORM).text.replace('"udp"', '"udpx"'))


def test_connector_security_group_opens_nothing_but_ssh() -> None:
    group = json.loads(render(spec_of(Role.CONNECTOR), Format.AWS_SG).text)["SecurityGroups"][0]
    assert [
        (p["IpProtocol"], p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissions"]
    ] == [("tcp", 22, ["192.0.2.10/32"])]
    bare = parse_spec(Role.CONNECTOR, subnets=["10.1.0.0/24"])
    tf = terraform_groups(render(bare, Format.TERRAFORM).text)
    assert tf["zerogate_connector"]["ingress"] == []  # explicit: Terraform then removes any ingress
    egress_all = [p for p in group["IpPermissionsEgress"] if p["IpProtocol"] == "-1"]
    assert [r["CidrIp"] for p in egress_all for r in p["IpRanges"]] == ["10.1.0.0/24"]


def test_cloud_connector_groups_per_interface() -> None:
    doc = json.loads(render(spec_of(Role.CLOUD), Format.AWS_SG).text)
    mgmt, service = doc["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"]) for p in mgmt["IpPermissions"]] == [("tcp", 22)]
    assert {r["CidrIp"] for p in mgmt["IpPermissions"] for r in p["IpRanges"]} == {"192.0.2.0/24"}
    egress = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) for p in mgmt["IpPermissionsEgress"]}
    assert {
        ("udp", 53, 53),
        ("tcp", 53, 53),
        ("tcp", 443, 443),
        ("udp", 443, 443),
        ("udp", 123, 123),
    } <= egress
    assert ("tcp", 8443, 8443) in egress and ("udp", 51820, 53000) in egress
    sources = {r["CidrIp"] for p in service["IpPermissions"] for r in p["IpRanges"]}
    assert sources == {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}  # never the internet
    azure = json.loads(render(spec_of(Role.CLOUD), Format.AZURE_NSG).text)
    assert [r["name"] for r in azure["resources"]] == [
        "zerogate-cloud-connector-mgmt",
        "zerogate-cloud-connector-service",
    ]


def test_cloud_notes_say_what_was_left_out() -> None:
    notes = " ".join(render(spec_of(Role.GATEWAY), Format.AWS_SG).notes)
    assert "source port" in notes and "tunnel interface zg-gw" in notes and "revoke" in notes
    assert "tunnel interface zg-gw" in render(spec_of(Role.GATEWAY), Format.TERRAFORM).text


def test_descriptions_fit_every_target() -> None:
    for role in Role:
        for rule in role_ruleset(spec_of(role)).rules:
            assert AWS_TEXT.fullmatch(rule.why) and len(rule.why) <= 100 and '"' not in rule.why


# --------------------------------------------------------------------------- option validation


@pytest.mark.parametrize(
    ("role", "options", "message"),
    [
        (Role.GATEWAY, {"port_range": "53000-51820"}, "FIRST < LAST"),
        (Role.GATEWAY, {"port_range": "51820-51820"}, "at least two ports"),
        (Role.GATEWAY, {"port_range": "0-10"}, "between 1 and 65535"),
        (Role.GATEWAY, {"port_range": "abc"}, "FIRST-LAST"),
        (Role.GATEWAY, {"controller_port": 70000}, "between 1 and 65535"),
        (Role.GATEWAY, {"mgmt_cidrs": ["10.0.0.1/8"]}, "did you mean 10.0.0.0/8"),
        (Role.GATEWAY, {"mgmt_cidrs": ["nonsense"]}, "not an IP network"),
        (Role.GATEWAY, {"tunnel_interface": "a-very-long-interface"}, "not a Linux interface name"),
        (Role.GATEWAY, {"subnets": ["10.0.0.0/8"]}, "--subnet does not apply to --role gateway"),
        (Role.CONNECTOR, {}, "needs at least one --subnet"),
        (Role.CLIENT, {"mgmt_cidrs": ["10.0.0.0/8"]}, "add --allow-ssh"),
        (Role.CLIENT, {"port_range": "1000-2000"}, "--port-range does not apply"),
        (Role.CLOUD, {"mgmt_interface": "eth1"}, "three different interfaces"),
        ("router", {}, "is not a role"),
    ],
)
def test_bad_options_are_refused_with_the_fix(
    role: Role | str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(FirewallSpecError, match=re.escape(message)):
        parse_spec(role, **options)


# --------------------------------------------------------------------------- real traffic

SERVER = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    udp = port.startswith("u")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port.lstrip("u"))))
    if not udp:
        s.listen(16)
    sel.register(s, selectors.EVENT_READ, udp)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.5):
        if key.data:
            _, peer = key.fileobj.recvfrom(64)
            key.fileobj.sendto(b"ok\n", peer)
        else:
            conn, _ = key.fileobj.accept()
            conn.sendall(b"ok\n")
            conn.close()
"""

PROBE = r"""
import json, socket, sys
results = []
for target in sys.argv[1:]:
    src, host, port = target.split(",")
    udp = port.startswith("u")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        if src:
            s.bind((src, 0))
        if udp:
            s.sendto(b"hi", (host, int(port[1:])))
        else:
            s.connect((host, int(port)))
        results.append(s.recv(8) == b"ok\n")
    except OSError:
        results.append(False)
    finally:
        s.close()
print(json.dumps(results))
"""

FIREWALLD_ARGV = ("firewalld", "--nofork", "--nopid", "--log-target", "console", "--system-config")
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[Callable[..., None]]:
    """start(ns, *ports): answer "ok" on each TCP port (or UDP port "uN") in ns; stopped after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(ns: str, *ports: int | str) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, *map(str, ports)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline().strip() == "ready", "test server did not start"

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def probe(ns: str, *targets: str) -> list[bool]:
    """Which "SRC,HOST,PORT" targets answer from ns (SRC may be empty; PORT "uN" is UDP)."""
    return list(json.loads(in_ns(ns, sys.executable, "-c", PROBE, *targets).stdout))


def pings(ns: str, host: str) -> bool:
    return in_ns(ns, "ping", "-c", "1", "-W", "1", "-q", host, check=False).returncode == 0


def veth(ns_a: str, name_a: str, addr_a: str | None, ns_b: str, name_b: str, addr_b: str | None) -> None:
    run("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        if addr:
            run("ip", "-n", ns, "addr", "add", addr, "dev", name)
        run("ip", "-n", ns, "link", "set", name, "up")


Enforce = Callable[[str, FirewallSpec], None]


@pytest.fixture(params=[Format.NFTABLES, Format.FIREWALLD], ids=["nftables", "firewalld"])
def enforce(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Enforce]:
    """enforce(ns, spec): put the role's rules in force in ns, by nft -f or by a real firewalld.

    firewalld runs in the namespace with its own D-Bus system bus and the rendered
    files as its whole permanent configuration; the role's host zone is the default
    zone (what the rendering's note tells a user to do).
    """
    procs: list[subprocess.Popen[Any]] = []
    sockdir = Path(tempfile.mkdtemp(prefix="zgfr"))  # short path: unix socket names are limited

    def start(ns: str, spec: FirewallSpec) -> None:
        rendering = render(spec, request.param)
        if request.param is Format.NFTABLES:
            path = tmp_path / "rules.nft"
            path.write_text(rendering.text)
            in_ns(ns, "nft", "-f", str(path))
            return
        host_zone = next(n for n, _ in rendering.files if n.startswith("zones/zerogate-"))
        config = _firewalld_config(tmp_path, rendering.files, Path(host_zone).stem)
        socket_path = sockdir / "bus"
        (sockdir / "bus.conf").write_text(BUS_CONFIG.format(socket=socket_path))
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={sockdir / 'bus.conf'}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(bus)
        assert bus.stdout is not None and select.select([bus.stdout], [], [], 10)[0], "dbus-daemon is silent"
        assert str(socket_path) in bus.stdout.readline()
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket_path}", "LC_ALL": "C"}
        log = tmp_path / "firewalld.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                ["ip", "netns", "exec", ns, *FIREWALLD_ARGV, str(config)],
                env=env,
                stdout=out,
                stderr=out,
            )
        procs.append(daemon)
        deadline = time.monotonic() + 30
        while run("firewall-cmd", "--state", check=False, env=env).stdout.strip() != "running":
            assert daemon.poll() is None, f"firewalld exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"firewalld did not start: {log.read_text()}"
            time.sleep(0.1)

    try:
        yield start
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


def test_client_hardening_drops_inbound_keeps_outbound_tunnel_and_ssh(
    netns: Callable[[], str], servers: Callable[..., None], enforce: Enforce
) -> None:
    host, peer = netns(), netns()
    veth(host, "eth0", "10.99.0.1/24", peer, "eth0", "10.99.0.2/24")
    run("ip", "-n", peer, "addr", "add", "10.99.0.3/24", "dev", "eth0")
    veth(host, "zg-cl", "100.64.0.1/24", peer, "tun0", "100.64.0.2/24")
    servers(host, 8080, 22)
    servers(peer, 8080)
    inbound = (",10.99.0.1,8080", "10.99.0.2,10.99.0.1,22", "10.99.0.3,10.99.0.1,22", ",100.64.0.1,8080")
    outbound = (",10.99.0.2,8080",)
    assert probe(peer, *inbound) + probe(host, *outbound) == [True] * 5, "baseline: everything answers"

    enforce(host, parse_spec(Role.CLIENT, allow_ssh=True, mgmt_cidrs=["10.99.0.2/32"]))

    assert probe(peer, *inbound) == [
        False,  # unsolicited inbound to an open port: dropped
        True,  # SSH from the declared management address
        False,  # SSH from another address
        True,  # anything arriving through the tunnel interface
    ]
    assert probe(host, *outbound) == [True]  # outgoing connections and their replies still work


def test_connector_forwards_only_tunnel_to_fronted_subnet_and_limits_egress(
    netns: Callable[[], str], servers: Callable[..., None], enforce: Enforce
) -> None:
    tunnel, conn, lan = netns(), netns(), netns()
    veth(conn, "zg-cn", "100.64.0.1/24", tunnel, "tun0", "100.64.0.2/24")
    veth(conn, "eth1", "10.1.0.1/24", lan, "eth0", "10.1.0.2/24")
    run("ip", "-n", lan, "addr", "add", "10.2.0.2/24", "dev", "eth0")
    run("ip", "-n", conn, "route", "add", "10.2.0.0/24", "dev", "eth1")
    run("ip", "-n", tunnel, "route", "add", "default", "via", "100.64.0.1")
    run("ip", "-n", lan, "route", "add", "default", "via", "10.1.0.1")
    in_ns(conn, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    servers(lan, 8080, 443)
    servers(tunnel, 8080)
    servers(conn, 8080)
    from_tunnel = (",10.1.0.2,8080", ",10.2.0.2,8080")
    from_lan = (",100.64.0.2,8080", ",10.1.0.1,8080")
    from_conn = (",10.2.0.2,443", ",10.2.0.2,8080", ",10.1.0.2,8080")
    before = probe(tunnel, *from_tunnel) + probe(lan, *from_lan) + probe(conn, *from_conn)
    assert before == [True] * 7, "baseline: everything answers"

    enforce(conn, parse_spec(Role.CONNECTOR, subnets=["10.1.0.0/24"]))

    assert probe(tunnel, *from_tunnel) == [True, False]  # fronted subnet yes, other subnet no
    assert probe(lan, *from_lan) == [False, False]  # nothing new from the LAN: not into the tunnel, not in
    assert probe(conn, *from_conn) == [True, False, True]  # TLS out yes, other ports no, fronted apps yes
    assert pings(tunnel, "100.64.0.1"), "the gateways' liveness probe (ICMP echo in the tunnel) is answered"
    assert not pings(lan, "10.1.0.1")


def test_gateway_forwards_tunnel_to_tunnel_only_and_opens_the_port_range(
    netns: Callable[[], str], servers: Callable[..., None], enforce: Enforce
) -> None:
    gw, peer1, peer2, wan = netns(), netns(), netns(), netns()
    # The tunnel is a bridge here, so two peers sit behind one interface named zg-gw and the
    # gateway routes between them (in through zg-gw, out through zg-gw) like between WireGuard peers.
    run("ip", "-n", gw, "link", "add", "zg-gw", "type", "bridge")
    run("ip", "-n", gw, "addr", "add", "100.64.0.1/24", "dev", "zg-gw")
    run("ip", "-n", gw, "link", "set", "zg-gw", "up")
    for i, peer in ((2, peer1), (3, peer2)):
        veth(gw, f"gp{i}", None, peer, "e0", f"100.64.0.{i}/32")
        run("ip", "-n", gw, "link", "set", f"gp{i}", "master", "zg-gw")
        run("ip", "-n", peer, "route", "add", "100.64.0.1", "dev", "e0")
        run("ip", "-n", peer, "route", "add", "default", "via", "100.64.0.1", "dev", "e0")
    veth(gw, "eth0", "10.50.0.1/24", wan, "eth0", "10.50.0.2/24")
    run("ip", "-n", wan, "route", "add", "100.64.0.0/24", "via", "10.50.0.1")
    for key in (
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.zg-gw.send_redirects=0",
    ):
        in_ns(gw, "sysctl", "-qw", key)
    servers(peer2, 8080)
    servers(wan, 8080, 443)
    servers(gw, 8080, 22, "u51820", "u51821", "u9999")
    from_peer = (",100.64.0.3,8080", ",10.50.0.2,8080")
    from_wan = (
        ",10.50.0.1,8080",
        ",10.50.0.1,22",
        ",10.50.0.1,u51820",
        ",10.50.0.1,u51821",
        ",10.50.0.1,u9999",
    )
    from_gw = (",10.50.0.2,443", ",10.50.0.2,8080")
    before = probe(peer1, *from_peer) + probe(wan, *from_wan) + probe(gw, *from_gw)
    assert before == [True] * 9, "baseline: everything answers"

    enforce(gw, parse_spec(Role.GATEWAY, port_range="51820-51830", mgmt_cidrs=["10.50.0.2/32"]))

    assert probe(peer1, *from_peer) == [True, False]  # peer to peer through the gateway; not to the internet
    assert probe(wan, *from_wan) == [False, True, True, True, False]  # SSH from mgmt, WireGuard + probe port
    assert probe(gw, *from_gw) == [True, False]  # controller TLS out; nothing else


# --------------------------------------------------------------------------- CLI


def zerogate(*args: str) -> subprocess.CompletedProcess[str]:
    return run(ZEROGATE, "firewall", "render", *args, check=False)


def test_cli_prints_the_rendering_and_notes_on_stderr() -> None:
    proc = zerogate("--role", "connector", "--format", "nftables", "--subnet", "10.1.0.0/24")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == render(parse_spec(Role.CONNECTOR, subnets=["10.1.0.0/24"]), Format.NFTABLES).text
    assert "inbound SSH to this host is blocked" in proc.stderr
    proc = zerogate("--role", "gateway", "--format", "aws-sg")
    assert proc.returncode == 0 and json.loads(proc.stdout)["SecurityGroups"]
    assert "source port" in proc.stderr


def test_cli_writes_file_and_firewalld_directory(tmp_path: Path) -> None:
    out = tmp_path / "gw.rules"
    proc = zerogate(
        "--role", "gateway", "--format", "iptables", "--mgmt-cidr", "192.0.2.0/24", "-o", str(out)
    )
    assert proc.returncode == 0 and proc.stdout == ""
    assert out.read_text().rstrip().endswith("COMMIT") and f"wrote {out}" in proc.stderr
    etc = tmp_path / "etc-firewalld"
    proc = zerogate("--role", "client-hardening", "--format", "firewalld", "--output", str(etc))
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(etc)) for p in etc.rglob("*.xml")) == [
        "zones/zerogate-client.xml",
        "zones/zerogate.xml",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "connector", "--format", "nftables"], "needs at least one --subnet"),
        (
            ["--role", "client-hardening", "--format", "aws-sg"],
            "use --format nftables, iptables or firewalld",
        ),
        (["--role", "gateway", "--format", "nftables", "--port-range", "9-3"], "FIRST < LAST"),
        (
            ["--role", "gateway", "--format", "nftables", "--mgmt-cidr", "10.0.0.1/8"],
            "did you mean 10.0.0.0/8",
        ),
        (["--role", "gateway", "--format", "nftables", "--allow-ssh"], "--allow-ssh does not apply"),
        (["--role", "gateway", "--format", "pf"], "'pf' is not one of"),
        (["--role", "router", "--format", "nftables"], "'router' is not one of"),
    ],
)
def test_cli_bad_input_exits_nonzero_and_writes_nothing(
    args: list[str], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "existing.nft"
    out.write_text("old\n")
    proc = zerogate(*args, "--output", str(out))
    assert proc.returncode != 0 and proc.stdout == ""
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert out.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [out]


def test_cli_output_to_a_directory_for_a_single_file_format_is_refused(tmp_path: Path) -> None:
    proc = zerogate("--role", "gateway", "--format", "nftables", "-o", str(tmp_path))
    assert proc.returncode == 1 and "is a directory" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_firewall_help_lists_render() -> None:
    proc = run(ZEROGATE, "firewall", "--help")
    assert "render" in proc.stdout
    help_text = run(ZEROGATE, "firewall", "render", "--help").stdout
    assert "--mgmt-cidr" in help_text and "cloud-connector" in help_text


def test_tools_are_installed() -> None:
    """The checks above need these; bootstrap installs them (firewalld brings firewall-offline-cmd)."""
    for tool in ("nft", "iptables-restore", "firewall-offline-cmd", "firewalld", "dbus-daemon", "ip", "ping"):
        assert shutil.which(tool), f"{tool} missing"
