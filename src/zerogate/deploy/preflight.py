"""``zerogate preflight``: can this host run a role? Each check a clear pass/warn/fail with the fix.

Layers:

* pure parsers for what the host exposes (``/proc/cpuinfo``, ``/proc/meminfo``,
  ``/proc/net/route``, ``nft -j list ruleset``, ``iptables-legacy-save``),
  tested with captured text;
* pure checks that take facts (:class:`HostFacts`, :class:`FirewallFacts`)
  and return :class:`~zerogate.deploy.connectivity.Check` lines;
* :func:`gather_host_facts`, the thin layer that reads this host, and
  :func:`run_preflight`, which puts it all together (network checks come
  from :mod:`zerogate.deploy.connectivity`).

Nothing here changes the host.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from zerogate.deploy.connectivity import (
    Check,
    GatewayTarget,
    ProxyEnv,
    bypasses_proxy,
    check_install_string,
    proxy_for_https,
    read_proxy_env,
    redact_proxy,
)
from zerogate.deploy.sizing import HostMinimum, host_minimum
from zerogate.netops.command import CommandError, run
from zerogate.pki.install_string import InvalidInstallString, parse_install_string

__all__ = [
    "Chain",
    "FirewallFacts",
    "HostFacts",
    "check_aesni",
    "check_arch",
    "check_cores",
    "check_disk",
    "check_gateway_ports",
    "check_mac",
    "check_memory",
    "check_proxy",
    "check_root",
    "check_systemd",
    "default_route_interface",
    "firewall_checks",
    "gather_host_facts",
    "parse_cpu_flags",
    "parse_iptables_save",
    "parse_mem_total",
    "parse_nft_chains",
    "run_preflight",
]

GIB = 1024**3
# MemTotal excludes memory the kernel and firmware keep, so a "4 GB" VM shows ~3.8 GiB.
_MEMORY_SLACK = 0.9
TUNNEL_IFACES = "zg-+"
_NETWORK_ROLES = ("connector", "gateway")


# --------------------------------------------------------------------------- parsers (pure)


def parse_cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """The CPU feature flags of the first processor, or None if the text has none."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def parse_mem_total(meminfo: str) -> int | None:
    """MemTotal in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def default_route_interface(route_v4: str, route_v6: str = "") -> str | None:
    """The interface of the default route (lowest metric), from /proc/net/route and ipv6_route."""
    best: tuple[int, str] | None = None
    for line in route_v4.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            flags, metric = int(cols[3], 16), int(cols[6])
            if flags & 0x1 and (best is None or metric < best[0]):  # RTF_UP
                best = (metric, cols[0])
    if best is not None:
        return best[1]
    for line in route_v6.splitlines():
        cols = line.split()
        if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
            metric = int(cols[5], 16)
            if best is None or metric < best[0]:
                best = (metric, cols[9])
    return best[1] if best else None


@dataclass(frozen=True)
class Chain:
    """A firewall chain: base chains have a hook and a policy."""

    source: str  # "nftables" or "iptables-legacy"
    family: str
    table: str
    name: str
    hook: str | None = None
    policy: str | None = None

    @property
    def where(self) -> str:
        if self.source == "iptables-legacy":
            return f"iptables-legacy table {self.table} chain {self.name}"
        return f"nftables table {self.family} {self.table} chain {self.name}"


def parse_nft_chains(ruleset_json: str) -> tuple[Chain, ...]:
    """Chains from ``nft -j list ruleset``."""
    data = json.loads(ruleset_json)
    chains = []
    for item in data.get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if isinstance(chain, dict):
            chains.append(
                Chain(
                    "nftables",
                    str(chain.get("family", "")),
                    str(chain.get("table", "")),
                    str(chain.get("name", "")),
                    chain.get("hook"),
                    chain.get("policy"),
                )
            )
    return tuple(chains)


@dataclass(frozen=True)
class IptablesDump:
    chains: tuple[Chain, ...]
    rules: int


_BUILTIN_HOOKS = {
    "INPUT": "input",
    "FORWARD": "forward",
    "OUTPUT": "output",
    "PREROUTING": "prerouting",
    "POSTROUTING": "postrouting",
}


def parse_iptables_save(text: str, source: str = "iptables-legacy", family: str = "ip") -> IptablesDump:
    """Chains (with built-in policies) and the rule count from ``iptables-save`` output."""
    table = ""
    chains: list[Chain] = []
    rules = 0
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            parts = line[1:].split()
            name = parts[0]
            policy = parts[1].lower() if len(parts) > 1 and parts[1] != "-" else None
            chains.append(Chain(source, family, table, name, _BUILTIN_HOOKS.get(name), policy))
        elif line.startswith("-A "):
            rules += 1
    return IptablesDump(tuple(chains), rules)


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class FirewallFacts:
    firewalld: str = "absent"  # running | not running | absent
    ufw: str = "absent"  # active | inactive | absent
    chains: tuple[Chain, ...] = ()
    legacy_rules: int = 0
    legacy_policies: int = 0  # built-in chains whose policy is not ACCEPT
    problems: tuple[str, ...] = ()  # what could not be read


@dataclass(frozen=True)
class HostFacts:
    machine: str = "x86_64"
    pid1: str | None = "systemd"
    euid: int = 0
    cores: int = 1
    cpu_flags: frozenset[str] | None = None
    memory_bytes: int | None = None
    disk_path: str = "/"
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    default_iface: str | None = None
    mac: str | None = None
    udp_ports_in_use: frozenset[int] = frozenset()
    proxies: ProxyEnv = field(default_factory=lambda: ProxyEnv({}))
    firewall: FirewallFacts = field(default_factory=FirewallFacts)


# --------------------------------------------------------------------------- host checks (pure)


def check_arch(machine: str) -> Check:
    if machine in ("x86_64", "amd64"):
        return Check("arch", "CPU architecture", "pass", machine)
    return Check(
        "arch",
        "CPU architecture",
        "fail",
        f"this host is {machine}; zerogate's packages and services support Linux x86_64 only",
        fix="use an x86_64 (amd64) host or VM",
    )


def check_systemd(pid1: str | None) -> Check:
    if pid1 == "systemd":
        return Check("systemd", "systemd", "pass", "PID 1 is systemd")
    seen = f"PID 1 is {pid1!r}, not systemd" if pid1 else "cannot tell what PID 1 is"
    return Check(
        "systemd",
        "systemd",
        "fail",
        f"{seen}: zerogate's daemons are installed as systemd units",
        fix="install on a host booted with systemd (a container needs systemd as its init), or run "
        "the daemons under your own supervisor",
    )


def check_root(euid: int) -> Check:
    if euid == 0:
        return Check("root", "root", "pass", "running as root")
    return Check(
        "root",
        "root",
        "fail",
        f"running as uid {euid}: installing and running zerogate needs root (firewall, WireGuard, "
        "systemd), and some checks below cannot see everything",
        fix="run it again as root: sudo zerogate preflight ...",
    )


def check_cores(cores: int, need: HostMinimum) -> Check:
    title = "CPU cores"
    detail = f"{cores} core(s); {need.role} needs at least {need.min_cores}, recommended {need.rec_cores}"
    if cores < need.min_cores:
        return Check(
            "cpu",
            title,
            "fail",
            detail,
            fix=f"give this host at least {need.min_cores} cores ({need.source})",
        )
    if cores < need.rec_cores:
        return Check(
            "cpu",
            title,
            "warn",
            detail,
            fix=f"fine for small loads; size it with 'zerogate sizing --role {need.role} ...' ({need.source})",
        )
    return Check("cpu", title, "pass", detail)


def check_aesni(flags: frozenset[str] | None) -> Check:
    title = "AES-NI"
    if flags is None:
        return Check(
            "aes-ni",
            title,
            "warn",
            "cannot read the CPU flags from /proc/cpuinfo",
            fix="check that the CPU (or the VM's CPU model) exposes the 'aes' flag",
        )
    if "aes" in flags:
        return Check("aes-ni", title, "pass", "the CPU has AES instructions (aes flag)")
    return Check(
        "aes-ni",
        title,
        "warn",
        "the CPU lacks AES instructions: TLS to the controller is slower (WireGuard itself uses "
        "ChaCha20 and does not need them)",
        fix="expose the host CPU's AES-NI to the VM (e.g. CPU model 'host' / 'host-passthrough')",
    )


def check_memory(memory_bytes: int | None, need: HostMinimum) -> Check:
    title = "memory"
    if memory_bytes is None:
        return Check(
            "memory", title, "warn", "cannot read MemTotal from /proc/meminfo", fix="check /proc is mounted"
        )
    gib = memory_bytes / GIB
    detail = f"{gib:.1f} GiB; {need.role} needs at least {need.min_memory_gb} GB, recommended {need.rec_memory_gb} GB"
    if gib < need.min_memory_gb * _MEMORY_SLACK:
        return Check(
            "memory", title, "fail", detail, fix=f"give this host at least {need.min_memory_gb} GB of memory"
        )
    if gib < need.rec_memory_gb * _MEMORY_SLACK:
        return Check(
            "memory",
            title,
            "warn",
            detail,
            fix=f"fine for small loads; {need.rec_memory_gb} GB recommended ({need.source})",
        )
    return Check("memory", title, "pass", detail)


def check_disk(path: str, free: int | None, total: int | None, need: HostMinimum) -> Check:
    title = "disk"
    if free is None or total is None:
        return Check(
            "disk", title, "warn", f"cannot read the filesystem of {path}", fix="check that the path exists"
        )
    detail = (
        f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB on the filesystem of {path}; {need.role} needs "
        f"{need.min_free_disk_gb} GB free, recommended disk {need.rec_disk_gb} GB"
    )
    if free < need.min_free_disk_gb * GIB:
        return Check("disk", title, "fail", detail, fix=f"free at least {need.min_free_disk_gb} GB on {path}")
    if total < need.rec_disk_gb * GIB * _MEMORY_SLACK:
        return Check(
            "disk",
            title,
            "warn",
            detail,
            fix=f"a {need.rec_disk_gb} GB disk is recommended for logs and updates ({need.source})",
        )
    return Check("disk", title, "pass", detail)


def check_mac(iface: str | None, mac: str | None) -> Check:
    title = "static MAC"
    if iface is None:
        return Check(
            "mac",
            title,
            "warn",
            "no default route: cannot tell which interface faces the network",
            fix="configure a default route (the host must reach the controller and gateways)",
        )
    if not mac or mac == "00:00:00:00:00:00":
        return Check(
            "mac",
            title,
            "warn",
            f"{iface} (the default route's interface) has no MAC address",
            fix="nothing to do for a tunnel or PPP uplink; for VRRP use an Ethernet interface",
        )
    try:
        first = int(mac.split(":")[0], 16)
    except ValueError:
        return Check(
            "mac", title, "warn", f"{iface} has an unreadable MAC {mac!r}", fix="check the interface"
        )
    if first & 0x02:
        return Check(
            "mac",
            title,
            "warn",
            f"{iface} has a locally administered MAC {mac}: it may be randomised and change on reboot, "
            "which breaks DHCP reservations and VRRP",
            fix="give the NIC a fixed MAC (hypervisor setting) and turn off MAC randomisation "
            "(NetworkManager: ethernet.cloned-mac-address=permanent; systemd-networkd: "
            "MACAddressPolicy=persistent); a cloud-assigned MAC that never changes is fine",
        )
    return Check("mac", title, "pass", f"{iface} has the burned-in MAC {mac}")


def check_proxy(proxies: ProxyEnv, controller_host: str | None) -> Check:
    title = "proxy settings"
    shown = ", ".join(f"{n}={redact_proxy(v)}" for n, v in proxies.values.items())
    if proxies.conflicts:
        names = ", ".join(f"{n}/{n.lower()}" for n in proxies.conflicts)
        return Check(
            "proxy",
            title,
            "warn",
            f"{names} are set to different values; programs disagree about which applies "
            f"(zerogate uses the lower-case one): {shown}",
            fix="set both spellings to the same value",
        )
    if not proxies.any_proxy:
        extra = f" (NO_PROXY={proxies.get('NO_PROXY')})" if proxies.get("NO_PROXY") else ""
        return Check("proxy", title, "pass", f"no proxy set: HTTPS to the controller goes direct{extra}")
    if controller_host is None:
        return Check(
            "proxy",
            title,
            "pass",
            f"{shown}; pass --install-string to check whether the controller bypasses the proxy",
        )
    proxy = proxy_for_https(controller_host, proxies)
    if proxy is None:
        reason = (
            "it is in NO_PROXY"
            if bypasses_proxy(controller_host, proxies.get("NO_PROXY"))
            else "no HTTPS proxy"
        )
        return Check("proxy", title, "pass", f"{shown}; HTTPS to {controller_host} goes direct ({reason})")
    return Check(
        "proxy",
        title,
        "warn",
        f"HTTPS to the controller {controller_host} goes through the proxy {redact_proxy(proxy)} "
        "(NO_PROXY does not list it): pinned TLS works through a plain CONNECT proxy but fails if "
        "the proxy inspects TLS; UDP to the gateways never uses the proxy",
        fix=f"if this host can reach {controller_host} directly, add it to NO_PROXY and no_proxy; "
        f"otherwise make sure the proxy does not inspect TLS to {controller_host}",
    )


def check_gateway_ports(in_use: frozenset[int], gateway: GatewayTarget) -> Check:
    title = "gateway UDP ports free"
    wanted = {gateway.port_first: "WireGuard", gateway.probe_port: "probe"}
    busy = [f"{port} ({what})" for port, what in wanted.items() if port in in_use]
    if not busy:
        return Check("ports", title, "pass", f"UDP {gateway.port_first} and {gateway.probe_port} are free")
    return Check(
        "ports",
        title,
        "warn",
        f"UDP {', '.join(busy)} already in use on this host",
        fix="stop what listens there ('ss -ulpn'), unless it is this gateway already running; or change "
        "the gateway's port range",
    )


# --------------------------------------------------------------------------- firewall checks (pure)


def _role_needs(role: str, gateway: GatewayTarget | None) -> dict[str, str]:
    udp = (
        f"inbound UDP {gateway.range_text} (WireGuard) and {gateway.probe_port} (probe)"
        if gateway
        else "inbound UDP on the gateway's port range (default 51820-53000) and its probe port"
    )
    needs = {
        "gateway": {
            "input": udp,
            "forward": "forwarding between clients and connectors",
            "output": "outbound TCP 443 to the controller",
        },
        "connector": {
            "forward": "forwarding from the tunnel into the site's subnets",
            "output": "outbound TCP 443 to the controller and UDP to the gateways",
        },
        "controller": {"input": "inbound TCP 443 (API and portal)"},
        "segment": {
            "output": "outbound SSH 22, WinRM 5985 and LDAP to the assets and the directory",
            "input": "inbound HTTPS 443 from the assets (MFA prompts)",
        },
    }
    return needs.get(role, {})


def _open_ports_fix(role: str, gateway: GatewayTarget | None, tool: str) -> str:
    first = gateway.port_first if gateway else 51820
    last = gateway.port_last if gateway and gateway.port_last else 53000
    probe = gateway.probe_port if gateway else first + 1
    if tool == "firewalld":
        if role == "gateway":
            return (
                f"firewall-cmd --permanent --add-port={first}-{last}/udp --add-port={probe}/udp && "
                "firewall-cmd --reload; or render the rules with 'zerogate firewall'"
            )
        return "render and apply this role's firewalld rules with 'zerogate firewall' (they survive reloads)"
    if role == "gateway":
        return f"ufw allow {first}:{last}/udp && ufw allow {probe}/udp && ufw route allow in on zg-<tunnel>"
    if role == "connector":
        return (
            "ufw route allow in on zg-<tunnel> (forwarding from the tunnel); outbound is allowed by default"
        )
    return "ufw allow 443/tcp"


def firewall_checks(fw: FirewallFacts, role: str, gateway: GatewayTarget | None = None) -> list[Check]:
    """What other firewall managers and dropping chains would block for ``role``."""
    needs = _role_needs(role, gateway)
    blocked = "; ".join(needs.values()) or "this role's traffic"
    checks: list[Check] = []
    if fw.firewalld == "running":
        checks.append(
            Check(
                "firewalld",
                "firewalld",
                "warn",
                "firewalld is running: its zones filter traffic alongside zerogate's own nftables table "
                f"and can block {blocked}",
                fix=_open_ports_fix(role, gateway, "firewalld"),
            )
        )
    if fw.ufw == "active":
        checks.append(
            Check(
                "ufw",
                "ufw",
                "warn",
                f"ufw is active: by default it drops inbound and routed traffic, which blocks {blocked}",
                fix=_open_ports_fix(role, gateway, "ufw"),
            )
        )
    docker = sorted({f"{c.name} ({c.where})" for c in fw.chains if c.name in ("DOCKER", "DOCKER-USER")})
    if docker:
        forwarding = role in _NETWORK_ROLES
        checks.append(
            Check(
                "docker",
                "Docker",
                "warn",
                f"Docker's chains are present: {', '.join(docker)}. Docker sets the FORWARD policy to DROP "
                "and rewrites its rules whenever it restarts"
                + ("; that blocks forwarding between zerogate's tunnels and the LAN" if forwarding else ""),
                fix=f"accept zerogate's tunnel traffic in DOCKER-USER, which Docker leaves alone: "
                f"iptables -I DOCKER-USER -i {TUNNEL_IFACES} -j ACCEPT; "
                f"iptables -I DOCKER-USER -o {TUNNEL_IFACES} -j ACCEPT"
                if forwarding
                else "keep zerogate's rules out of Docker's chains",
            )
        )
    if fw.legacy_rules or fw.legacy_policies:
        checks.append(
            Check(
                "iptables-legacy",
                "legacy iptables",
                "warn",
                f"iptables-legacy holds {fw.legacy_rules} rule(s) and {fw.legacy_policies} non-ACCEPT "
                "policy(ies): the kernel applies them in addition to nftables, so they can drop traffic "
                "that zerogate's table accepts, and 'nft list ruleset' does not show them",
                fix="migrate them to nftables (iptables-legacy-save | iptables-restore-translate -f "
                "/dev/stdin) and flush the legacy tables, or make sure they accept this role's traffic",
            )
        )
    for chain in fw.chains:
        if chain.hook in needs and chain.policy == "drop":
            need = needs[chain.hook]
            checks.append(
                Check(
                    f"policy:{chain.source}:{chain.family}:{chain.table}:{chain.name}",
                    f"{chain.hook} policy",
                    "warn",
                    f"{chain.where} (hook {chain.hook}) drops by default: it blocks {need} unless one of its "
                    "rules accepts it (a packet must pass every base chain, not just zerogate's)",
                    fix=f"add a rule accepting {need} to that chain, or render one with 'zerogate firewall'",
                )
            )
    for problem in fw.problems:
        checks.append(
            Check("firewall-read", "firewall inspection", "warn", problem, fix="run preflight as root")
        )
    if not checks:
        checks.append(
            Check(
                "firewall",
                "other firewalls",
                "pass",
                "no firewalld, ufw, Docker chains or legacy iptables rules, and no base chain drops "
                f"what a {role} needs",
            )
        )
    return checks


# --------------------------------------------------------------------------- this host (I/O)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _run(argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    """Run a tool (see netops.command); None if it is not installed or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        return run(argv, timeout=timeout, check=False)
    except CommandError:
        return None


def _process_running(name: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _read(f"/proc/{entry.name}/comm") == f"{name}\n":
            return True
    return False


def gather_firewall_facts() -> FirewallFacts:
    problems: list[str] = []
    firewalld = "absent"
    if shutil.which("firewalld") or shutil.which("firewall-cmd"):
        firewalld = "running" if _process_running("firewalld") else "not running"
    ufw = "absent"
    status = _run(["ufw", "status"])
    if status is not None:
        ufw = "active" if "Status: active" in status.stdout else "inactive"
    chains: list[Chain] = []
    nft = _run(["nft", "-j", "list", "ruleset"])
    if nft is None:
        if shutil.which("nft"):
            problems.append("'nft -j list ruleset' did not finish")
    elif nft.returncode != 0:
        problems.append(f"cannot read the nftables ruleset: {nft.stderr.strip() or nft.returncode}")
    else:
        try:
            chains += parse_nft_chains(nft.stdout)
        except ValueError as exc:
            problems.append(f"unreadable 'nft -j' output: {exc}")
    legacy_rules = legacy_policies = 0
    for tool, family in (("iptables-legacy-save", "ip"), ("ip6tables-legacy-save", "ip6")):
        dump = _run([tool])
        if dump is None or dump.returncode != 0:
            continue
        parsed = parse_iptables_save(dump.stdout, family=family)
        chains += parsed.chains
        legacy_rules += parsed.rules
        legacy_policies += sum(1 for c in parsed.chains if c.policy not in (None, "accept"))
    return FirewallFacts(firewalld, ufw, tuple(chains), legacy_rules, legacy_policies, tuple(problems))


def busy_udp_ports(ports: Iterable[int]) -> frozenset[int]:
    """The ports among ``ports`` that something on this host has bound (tried by binding them)."""
    busy = set()
    for port in ports:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("0.0.0.0", port))  # noqa: S104 - a gateway listens on all addresses
        except OSError:
            busy.add(port)
    return frozenset(busy)


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def gather_host_facts(state_dir: Path, env: Mapping[str, str]) -> HostFacts:
    """Read everything the host checks need from this machine."""
    pid1 = _read("/proc/1/comm")
    cpuinfo = _read("/proc/cpuinfo")
    meminfo = _read("/proc/meminfo")
    disk_path = _existing(state_dir)
    free: int | None = None
    total: int | None = None
    try:
        usage = shutil.disk_usage(disk_path)
        free, total = usage.free, usage.total
    except OSError:
        pass
    iface = default_route_interface(_read("/proc/net/route") or "", _read("/proc/net/ipv6_route") or "")
    mac = _read(f"/sys/class/net/{iface}/address") if iface else None
    return HostFacts(
        machine=platform.machine(),
        pid1=pid1.strip() if pid1 else None,
        euid=os.geteuid(),
        cores=len(os.sched_getaffinity(0)),
        cpu_flags=parse_cpu_flags(cpuinfo) if cpuinfo else None,
        memory_bytes=parse_mem_total(meminfo) if meminfo else None,
        disk_path=str(disk_path),
        disk_free_bytes=free,
        disk_total_bytes=total,
        default_iface=iface,
        mac=mac.strip() if mac else None,
        proxies=read_proxy_env(env),
        firewall=gather_firewall_facts(),
    )


# --------------------------------------------------------------------------- putting it together


def host_checks(facts: HostFacts, role: str) -> list[Check]:
    need = host_minimum(role)
    return [
        check_arch(facts.machine),
        check_systemd(facts.pid1),
        check_root(facts.euid),
        check_cores(facts.cores, need),
        check_aesni(facts.cpu_flags),
        check_memory(facts.memory_bytes, need),
        check_disk(facts.disk_path, facts.disk_free_bytes, facts.disk_total_bytes, need),
        check_mac(facts.default_iface, facts.mac),
    ]


def _controller_host(install_string: str | None) -> str | None:
    if not install_string:
        return None
    try:
        return urlsplit(parse_install_string(install_string).controller_url).hostname
    except InvalidInstallString:
        return None


def run_preflight(
    role: str,
    install_string: str | None,
    state_dir: Path,
    env: Mapping[str, str],
    facts: HostFacts | None = None,
) -> list[Check]:
    """All preflight checks for ``role`` on this host (or on ``facts``, for tests)."""
    probe_host = facts is None
    facts = facts or gather_host_facts(state_dir, env)
    checks = host_checks(facts, role)
    checks.append(check_proxy(facts.proxies, _controller_host(install_string)))
    gateway: GatewayTarget | None = None
    if install_string:
        report = check_install_string(install_string, role, env, probe_udp=role == "connector")
        checks += report.checks
        gateway = report.gateway_self if role == "gateway" else None
    elif role in _NETWORK_ROLES:
        checks.append(
            Check(
                "network",
                "network checks",
                "skip",
                "skipped: DNS, TCP 443, TLS interception and UDP to the gateways need the controller's "
                "address",
                fix="pass --install-string zg1... (from the admin) to run them",
            )
        )
    checks += firewall_checks(facts.firewall, role, gateway)
    if gateway is not None:
        in_use = facts.udp_ports_in_use
        if probe_host:
            in_use |= busy_udp_ports((gateway.port_first, gateway.probe_port))
        checks.append(check_gateway_ports(in_use, gateway))
    return checks


def summary(checks: Iterable[Check]) -> dict[str, int]:
    counts = {"pass": 0, "warn": 0, "fail": 0, "skip": 0}
    for c in checks:
        counts[c.status] += 1
    return counts
