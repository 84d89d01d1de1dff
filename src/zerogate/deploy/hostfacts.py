"""What preflight knows about a host: the facts, their parsers, and reading them here.

Layers:

* :class:`HostFacts` and :class:`FirewallFacts`, plain values the checks in
  :mod:`zerogate.deploy.preflight` take (tests build them by hand);
* pure parsers for what the host exposes (``/proc/cpuinfo``, ``/proc/meminfo``,
  ``/proc/net/route``, ``nft -j list ruleset``, ``iptables-save``), tested with
  captured text;
* :func:`gather_host_facts`, the thin layer that reads this host (``/proc``,
  ``/sys``, and ``ufw``/``nft``/``iptables-legacy-save`` through
  :func:`zerogate.netops.command.run`); a tool that is missing, fails or hangs
  leaves its fact empty or adds a problem, never an exception.

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

from zerogate.deploy.proxyenv import ProxyEnv, read_proxy_env
from zerogate.netops.command import CommandError, run

__all__ = [
    "Chain",
    "FirewallFacts",
    "HostFacts",
    "IptablesDump",
    "busy_udp_ports",
    "default_route_interface",
    "gather_firewall_facts",
    "gather_host_facts",
    "parse_cpu_flags",
    "parse_iptables_save",
    "parse_mem_total",
    "parse_nft_chains",
]

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


# --------------------------------------------------------------------------- this host (I/O)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _run(argv: Sequence[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str] | None:
    """Run a tool through the one command runner; None if it is not installed, cannot
    be run or hangs. A non-zero exit is returned as is: callers read its stderr."""
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
