"""``zerogate preflight``: can this host run a role? Each check a clear pass/warn/fail with the fix.

Layers:

* pure checks that take facts (:class:`~zerogate.deploy.hostfacts.HostFacts`,
  :class:`~zerogate.deploy.hostfacts.FirewallFacts`) and return
  :class:`~zerogate.deploy.checks.Check` lines;
* :func:`run_preflight`, which puts it all together: the facts of this host
  (gathered by :mod:`zerogate.deploy.hostfacts`) or supplied ones, the host and
  firewall checks, and the network checks from :mod:`zerogate.deploy.connectivity`.

Nothing here changes the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from zerogate.deploy.checks import Check, GatewayTarget
from zerogate.deploy.connectivity import check_install_string
from zerogate.deploy.hostfacts import FirewallFacts, HostFacts, busy_udp_ports, gather_host_facts
from zerogate.deploy.proxyenv import ProxyEnv, bypasses_proxy, proxy_for_https, redact_proxy
from zerogate.deploy.sizing import HostMinimum, host_minimum
from zerogate.pki.install_string import InvalidInstallString, parse_install_string

__all__ = [
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
    "firewall_checks",
    "host_checks",
    "run_preflight",
    "summary",
]

GIB = 1024**3
# MemTotal excludes memory the kernel and firmware keep, so a "4 GB" VM shows ~3.8 GiB.
_MEMORY_SLACK = 0.9
TUNNEL_IFACES = "zg-+"
_NETWORK_ROLES = ("connector", "gateway")


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
