"""Firewall rules for a zerogate role, rendered for one target (pure: no I/O).

One description of what a role needs -- :func:`role_ruleset`, a list of
abstract *allow* rules per hook (input, forward, output; everything else is
dropped) -- is rendered for host firewalls (nftables, ``iptables-restore``,
firewalld XML) and for cloud security groups (AWS security group JSON, an Azure
NSG ARM template, Terraform ``aws_security_group``). What a target cannot
express (forwarding, interfaces, source ports in a security group; IPv6 in an
iptables file) is said in :attr:`Rendering.notes`, never dropped silently.

Errors: :class:`FirewallSpecError` (a ``ValueError``) for a bad option or a
role/format pair that makes no sense; its message names the option and the fix.
"""

from __future__ import annotations

import ipaddress
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from zerogate.netops.wireguard import DEFAULT_INTERFACES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Proto = Literal["tcp", "udp", "any", "ping"]  # ping: ICMP / ICMPv6 echo request

NFT_TABLE = "inet zerogate_host"
FIREWALLD_TUNNEL_ZONE = "zerogate"  # the zone zerogate.netops.firewalld keeps the tunnel in
CHAIN_PREFIX = "ZEROGATE-"
DEFAULT_PORT_RANGE = "51820-53000"
DEFAULT_CONTROLLER_PORT = 443
DEFAULT_MGMT_INTERFACE = "eth0"
DEFAULT_SERVICE_INTERFACE = "eth1"
RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_ANYWHERE: tuple[Network, ...] = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


class FirewallSpecError(ValueError):
    """A bad option or role/format pair; the message says what to change."""


class Role(StrEnum):
    GATEWAY = "gateway"
    CONNECTOR = "connector"
    CLIENT = "client-hardening"
    CLOUD = "cloud-connector"


def default_tunnel(role: Role) -> str:
    """The tunnel interface the role's daemon (or client) creates unless told otherwise."""
    if role is Role.CLIENT:
        return DEFAULT_INTERFACES["client"]
    return DEFAULT_INTERFACES["gateway" if role is Role.GATEWAY else "connector"]


class Format(StrEnum):
    NFTABLES = "nftables"
    IPTABLES = "iptables"
    FIREWALLD = "firewalld"
    AWS_SG = "aws-sg"
    AZURE_NSG = "azure-nsg"
    TERRAFORM = "terraform"


CLOUD_FORMATS = frozenset({Format.AWS_SG, Format.AZURE_NSG, Format.TERRAFORM})
_SHORT = {Role.GATEWAY: "gw", Role.CONNECTOR: "conn", Role.CLIENT: "client", Role.CLOUD: "cloud"}


class Hook(StrEnum):
    INPUT = "input"
    FORWARD = "forward"
    OUTPUT = "output"


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class FirewallSpec:
    """Validated options of one render (build it with :func:`parse_spec`)."""

    role: Role
    port_range: PortRange = PortRange(51820, 53000)
    controller_port: int = DEFAULT_CONTROLLER_PORT
    tunnel: str = DEFAULT_INTERFACES["gateway"]  # parse_spec: the role's default
    mgmt_cidrs: tuple[Network, ...] = ()
    local_ranges: tuple[Network, ...] = tuple(ipaddress.IPv4Network(n) for n in RFC1918)
    subnets: tuple[Network, ...] = ()
    mgmt_interface: str = DEFAULT_MGMT_INTERFACE
    service_interface: str = DEFAULT_SERVICE_INTERFACE
    allow_ssh: bool = False

    def command_line(self, fmt: Format) -> str:
        """The ``zerogate firewall render`` line that reproduces this rendering."""
        args = ["zerogate firewall render", f"--role {self.role}", f"--format {fmt}"]
        if self.role is not Role.CLIENT:
            args += [f"--port-range {self.port_range}", f"--controller-port {self.controller_port}"]
        args.append(f"--tunnel-interface {self.tunnel}")
        if self.role is Role.CLOUD:
            args += [
                f"--mgmt-interface {self.mgmt_interface}",
                f"--service-interface {self.service_interface}",
            ]
            args += [f"--local-range {n}" for n in self.local_ranges]
        if self.allow_ssh:
            args.append("--allow-ssh")
        args += [f"--mgmt-cidr {n}" for n in self.mgmt_cidrs]
        args += [f"--subnet {n}" for n in self.subnets]
        return " ".join(args)


# Which options mean something for which role (others are refused, so a typo'd intent is not lost).
_APPLIES: dict[str, frozenset[Role]] = {
    "--port-range": frozenset({Role.GATEWAY, Role.CONNECTOR, Role.CLOUD}),
    "--controller-port": frozenset({Role.GATEWAY, Role.CONNECTOR, Role.CLOUD}),
    "--local-range": frozenset({Role.CLOUD}),
    "--subnet": frozenset({Role.CONNECTOR, Role.CLOUD}),
    "--mgmt-interface": frozenset({Role.CLOUD}),
    "--service-interface": frozenset({Role.CLOUD}),
    "--allow-ssh": frozenset({Role.CLIENT}),
}


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise FirewallSpecError(
            f"--role {text!r} is not a role: use one of {', '.join(r.value for r in Role)}"
        ) from None


def parse_port_range(text: str) -> PortRange:
    m = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", text)
    if not m:
        raise FirewallSpecError(f"--port-range {text!r}: write it as FIRST-LAST, e.g. {DEFAULT_PORT_RANGE}")
    first, last = int(m.group(1)), int(m.group(2))
    if not (1 <= first <= 65535 and 1 <= last <= 65535):
        raise FirewallSpecError(f"--port-range {text!r}: ports must be between 1 and 65535")
    if last <= first:
        raise FirewallSpecError(
            f"--port-range {text!r}: needs at least two ports, FIRST < LAST (WireGuard listens on the "
            f"first, the reachability probe answers on the next), e.g. {DEFAULT_PORT_RANGE}"
        )
    return PortRange(first, last)


def parse_port(value: int, option: str) -> int:
    if not 1 <= value <= 65535:
        raise FirewallSpecError(f"{option} {value}: a port is a number between 1 and 65535")
    return value


def parse_interface(text: str, option: str) -> str:
    if not _IFNAME.fullmatch(text):
        raise FirewallSpecError(
            f"{option} {text!r} is not a Linux interface name: 1-15 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return text


def parse_networks(values: Sequence[str], option: str) -> tuple[Network, ...]:
    """CIDRs in the order given, duplicates removed; host bits set is an error with the fix."""
    nets: list[Network] = []
    for raw in values:
        text = raw.strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise FirewallSpecError(
                    f"{option} {raw!r} is not an IP network: write ADDRESS/PREFIX, e.g. 10.1.0.0/24"
                ) from None
            raise FirewallSpecError(f"{option} {raw!r} has host bits set: did you mean {loose}?") from None
        if net not in nets:
            nets.append(net)
    return tuple(nets)


def parse_spec(
    role: Role | str,
    *,
    port_range: str | None = None,
    controller_port: int | None = None,
    tunnel_interface: str | None = None,
    mgmt_cidrs: Sequence[str] = (),
    local_ranges: Sequence[str] = (),
    subnets: Sequence[str] = (),
    mgmt_interface: str | None = None,
    service_interface: str | None = None,
    allow_ssh: bool = False,
) -> FirewallSpec:
    """Validate user strings once; ``None`` / empty means "not given" (the default applies)."""
    role = role if isinstance(role, Role) else parse_role(role)
    given = {
        "--port-range": port_range is not None,
        "--controller-port": controller_port is not None,
        "--local-range": bool(local_ranges),
        "--subnet": bool(subnets),
        "--mgmt-interface": mgmt_interface is not None,
        "--service-interface": service_interface is not None,
        "--allow-ssh": allow_ssh,
    }
    for option, is_given in given.items():
        if is_given and role not in _APPLIES[option]:
            users = ", ".join(sorted(r.value for r in _APPLIES[option]))
            raise FirewallSpecError(f"{option} does not apply to --role {role} (only to: {users}); drop it")
    spec = FirewallSpec(
        role=role,
        port_range=parse_port_range(port_range or DEFAULT_PORT_RANGE),
        controller_port=parse_port(
            DEFAULT_CONTROLLER_PORT if controller_port is None else controller_port, "--controller-port"
        ),
        tunnel=parse_interface(tunnel_interface or default_tunnel(role), "--tunnel-interface"),
        mgmt_cidrs=parse_networks(mgmt_cidrs, "--mgmt-cidr"),
        local_ranges=parse_networks(local_ranges or RFC1918, "--local-range"),
        subnets=parse_networks(subnets, "--subnet"),
        mgmt_interface=parse_interface(mgmt_interface or DEFAULT_MGMT_INTERFACE, "--mgmt-interface"),
        service_interface=parse_interface(
            service_interface or DEFAULT_SERVICE_INTERFACE, "--service-interface"
        ),
        allow_ssh=allow_ssh,
    )
    if role is Role.CONNECTOR and not spec.subnets:
        raise FirewallSpecError(
            "--role connector needs at least one --subnet (a subnet this connector fronts), "
            "e.g. --subnet 10.1.0.0/24: forwarding is allowed only to those"
        )
    if role is Role.CLIENT and spec.mgmt_cidrs and not allow_ssh:
        raise FirewallSpecError("--mgmt-cidr limits who may use SSH: add --allow-ssh, or drop --mgmt-cidr")
    if role is Role.CLOUD:
        names = [spec.mgmt_interface, spec.service_interface, spec.tunnel]
        if len(set(names)) != 3:
            raise FirewallSpecError(
                f"--mgmt-interface {spec.mgmt_interface}, --service-interface {spec.service_interface} and "
                f"--tunnel-interface {spec.tunnel} must be three different interfaces"
            )
    return spec


def check_combination(role: Role, fmt: Format) -> None:
    """Refuse pairs that make no sense (an endpoint has no cloud security group)."""
    if role is Role.CLIENT and fmt in CLOUD_FORMATS:
        raise FirewallSpecError(
            f"--format {fmt} describes a cloud security group, but --role client-hardening hardens an "
            "endpoint's own firewall: use --format nftables, iptables or firewalld"
        )


# --------------------------------------------------------------------------- what each role needs


@dataclass(frozen=True)
class Rule:
    """One allowance. Empty ``saddr``/``daddr`` means any address; ``None`` ports mean any port."""

    hook: Hook
    why: str
    proto: Proto = "any"
    dport: PortRange | None = None
    sport: PortRange | None = None
    saddr: tuple[Network, ...] = ()
    daddr: tuple[Network, ...] = ()
    iif: str | None = None
    oif: str | None = None
    host_only: bool = False  # traffic a cloud security group does not filter (DHCP, metadata service)


@dataclass(frozen=True)
class Ruleset:
    spec: FirewallSpec
    rules: tuple[Rule, ...]
    filtered: tuple[Hook, ...]  # hooks whose default is drop; others are left alone
    rpf_interfaces: tuple[str, ...] = ()  # strict reverse-path check (anti-spoofing)
    notes: tuple[str, ...] = ()

    def of(self, hook: Hook) -> list[Rule]:
        return [r for r in self.rules if r.hook is hook]


def _port(n: int) -> PortRange:
    return PortRange(n, n)


def _ssh(spec: FirewallSpec, iif: str | None = None) -> list[Rule]:
    if not spec.mgmt_cidrs:
        return []
    return [
        Rule(
            Hook.INPUT,
            "management SSH from declared networks",
            "tcp",
            _port(22),
            saddr=spec.mgmt_cidrs,
            iif=iif,
        )
    ]


def _probed(spec: FirewallSpec) -> Rule:
    """Gateways check a connector is alive with ICMP echo inside the tunnel (the kernel answers)."""
    return Rule(Hook.INPUT, "liveness probes from gateways, inside the tunnel", "ping", iif=spec.tunnel)


def _host_egress(oif: str | None = None) -> list[Rule]:
    """What any server needs out: name resolution, time, its own address (DHCP)."""
    link_local = (ipaddress.IPv6Network("fe80::/10"),)
    return [
        Rule(Hook.OUTPUT, "DNS", "udp", _port(53), oif=oif),
        Rule(Hook.OUTPUT, "DNS over TCP", "tcp", _port(53), oif=oif),
        Rule(Hook.OUTPUT, "NTP", "udp", _port(123), oif=oif),
        Rule(Hook.OUTPUT, "DHCP client", "udp", _port(67), _port(68), host_only=True),
        Rule(Hook.OUTPUT, "DHCPv6 client", "udp", _port(547), _port(546), saddr=link_local, host_only=True),
    ]


def _gateway(spec: FirewallSpec) -> list[Rule]:
    pr, tun = spec.port_range, spec.tunnel
    return [
        Rule(
            Hook.INPUT, f"WireGuard on {pr.first}, probe on {pr.first + 1}, rest of range reserved", "udp", pr
        ),
        *_ssh(spec),
        Rule(Hook.FORWARD, "between tunnel peers: the gateway policy table decides", iif=tun, oif=tun),
        Rule(Hook.OUTPUT, "controller (TLS, pinned)", "tcp", _port(spec.controller_port)),
        Rule(Hook.OUTPUT, "WireGuard and probe replies and re-handshakes to peers", "udp", sport=pr),
        Rule(Hook.OUTPUT, "own packets of the host into the tunnel", oif=tun),
        *_host_egress(),
    ]


def _connector(spec: FirewallSpec) -> list[Rule]:
    tun = spec.tunnel
    return [
        *_ssh(spec),
        _probed(spec),
        Rule(Hook.FORWARD, "from the tunnel to the fronted subnets only", iif=tun, daddr=spec.subnets),
        Rule(Hook.OUTPUT, "controller and gateways (TLS)", "tcp", _port(spec.controller_port)),
        Rule(Hook.OUTPUT, "WireGuard and probes to the gateway port range", "udp", spec.port_range),
        Rule(Hook.OUTPUT, "own checks of the fronted applications", daddr=spec.subnets),
        Rule(Hook.OUTPUT, "own packets of the host into the tunnel", oif=tun),
        *_host_egress(),
    ]


def _client(spec: FirewallSpec) -> list[Rule]:
    link_local = (ipaddress.IPv6Network("fe80::/10"),)
    rules = [
        Rule(Hook.INPUT, "the zerogate tunnel: the gateway policy already decided", iif=spec.tunnel),
        Rule(Hook.INPUT, "DHCP replies", "udp", _port(68), _port(67)),
        Rule(Hook.INPUT, "DHCPv6 replies", "udp", _port(546), _port(547), saddr=link_local),
    ]
    if spec.allow_ssh:
        why = "SSH from declared networks" if spec.mgmt_cidrs else "SSH (--allow-ssh)"
        rules.append(Rule(Hook.INPUT, why, "tcp", _port(22), saddr=spec.mgmt_cidrs))
    return rules


def _cloud(spec: FirewallSpec) -> list[Rule]:
    mgmt, svc, tun, local = spec.mgmt_interface, spec.service_interface, spec.tunnel, spec.local_ranges
    out = [
        Rule(Hook.OUTPUT, "TLS", "tcp", _port(443), oif=mgmt),
        Rule(Hook.OUTPUT, "DTLS and QUIC", "udp", _port(443), oif=mgmt),
        Rule(Hook.OUTPUT, "WireGuard and probes to the gateway port range", "udp", spec.port_range, oif=mgmt),
    ]
    if spec.controller_port != 443:
        out.append(Rule(Hook.OUTPUT, "controller (TLS)", "tcp", _port(spec.controller_port), oif=mgmt))
    metadata = (ipaddress.IPv4Network("169.254.169.254/32"),)
    return [
        *_ssh(spec, iif=mgmt),
        _probed(spec),
        Rule(Hook.INPUT, f"local workloads on {svc} (declared ranges only)", saddr=local, iif=svc),
        Rule(Hook.FORWARD, "local workloads into the tunnel", saddr=local, iif=svc, oif=tun),
        Rule(
            Hook.FORWARD,
            "tunnel to the local subnets this connector serves",
            daddr=spec.subnets or local,
            iif=tun,
            oif=svc,
        ),
        *_host_egress(oif=mgmt),
        *out,
        Rule(Hook.OUTPUT, "own traffic to local workloads", daddr=local, oif=svc),
        Rule(Hook.OUTPUT, "own packets of the host into the tunnel", oif=tun),
        Rule(
            Hook.OUTPUT, "cloud instance metadata service", "tcp", _port(80), daddr=metadata, host_only=True
        ),
    ]


def role_ruleset(spec: FirewallSpec) -> Ruleset:
    """The role's allowances; every hook in ``filtered`` drops what they do not allow."""
    all_hooks = (Hook.INPUT, Hook.FORWARD, Hook.OUTPUT)
    notes: list[str] = []
    if spec.role is not Role.CLIENT and not spec.mgmt_cidrs:
        notes.append("no --mgmt-cidr given: inbound SSH to this host is blocked")
    if spec.role is Role.GATEWAY:
        return Ruleset(spec, tuple(_gateway(spec)), all_hooks, notes=tuple(notes))
    if spec.role is Role.CONNECTOR:
        return Ruleset(spec, tuple(_connector(spec)), all_hooks, notes=tuple(notes))
    if spec.role is Role.CLIENT:
        notes.append("outgoing traffic and forwarding are left alone (allowed); only inbound is filtered")
        return Ruleset(spec, tuple(_client(spec)), (Hook.INPUT,), notes=tuple(notes))
    notes.append(
        f"route the local ranges via {spec.service_interface} (e.g. ip route add 10.0.0.0/8 via ROUTER dev "
        f"{spec.service_interface}): replies must leave where requests came in, and the anti-spoofing check "
        "drops packets whose source is not routed back out their incoming interface"
    )
    return Ruleset(
        spec, tuple(_cloud(spec)), all_hooks, (spec.mgmt_interface, spec.service_interface), tuple(notes)
    )


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Rendering:
    """Rendered files (relative name, content) and what the target could not express."""

    fmt: Format
    files: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]

    @property
    def text(self) -> str:
        """The one file, or for firewalld a listing of all files (write them with an output directory)."""
        if len(self.files) == 1:
            return self.files[0][1]
        parts = [
            f"# zerogate firewalld configuration: {len(self.files)} files. Write them into /etc/firewalld\n"
            "# with: zerogate firewall render ... --output /etc/firewalld; then run: firewall-cmd --reload\n",
            *(f"# Note: {note}\n" for note in self.notes),
        ]
        for name, content in self.files:
            parts.append(f"# ===== {name} =====\n{content}")
        return "".join(parts)


def render(spec: FirewallSpec, fmt: Format) -> Rendering:
    """Render ``spec``'s role for ``fmt``; raises :class:`FirewallSpecError` for a senseless pair."""
    check_combination(spec.role, fmt)
    rs = role_ruleset(spec)
    if fmt is Format.NFTABLES:
        return _render_nftables(rs)
    if fmt is Format.IPTABLES:
        return _render_iptables(rs)
    if fmt is Format.FIREWALLD:
        return _render_firewalld(rs)
    return _render_cloud(rs, fmt)


def _header(rs: Ruleset, fmt: Format, how: Sequence[str], notes: Sequence[str]) -> str:
    lines = [
        f"zerogate firewall rules for the {rs.spec.role} role ({fmt}).",
        f"Generated by: {rs.spec.command_line(fmt)}",
        *how,
        *(f"Note: {n}" for n in notes),
    ]
    return "".join(f"# {line}\n" for line in lines)


def _split_family(rule: Rule) -> Iterator[tuple[int, tuple[Network, ...], tuple[Network, ...]]]:
    """(version or 0 for "any family", saddr, daddr) for each address family the rule matches."""
    if not rule.saddr and not rule.daddr:
        yield 0, (), ()
        return
    for version in (4, 6):
        s = tuple(n for n in rule.saddr if n.version == version)
        d = tuple(n for n in rule.daddr if n.version == version)
        if (rule.saddr and not s) or (rule.daddr and not d):
            continue
        yield version, s, d


# --------------------------------------------------------------------------- nftables

_RPF_WHY = "anti-spoofing: source must be routed back out the same interface"
_ND_IN = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert"
_ND_OUT = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld2-listener-report"


def _nft_set(nets: tuple[Network, ...]) -> str:
    return str(nets[0]) if len(nets) == 1 else "{ " + ", ".join(str(n) for n in nets) + " }"


def _nft_rule(rule: Rule) -> list[str]:
    base = [f'iifname "{rule.iif}"'] if rule.iif else []
    base += [f'oifname "{rule.oif}"'] if rule.oif else []
    l4: list[str] = []
    if rule.proto in ("tcp", "udp"):
        l4 += [f"{rule.proto} sport {rule.sport}"] if rule.sport else []
        l4 += [f"{rule.proto} dport {rule.dport}"] if rule.dport else []
        l4 = l4 or [f"meta l4proto {rule.proto}"]
    lines = []
    for version, saddr, daddr in _split_family(rule):
        fam = "ip" if version == 4 else "ip6"
        addr = [f"{fam} saddr {_nft_set(saddr)}"] if saddr else []
        addr += [f"{fam} daddr {_nft_set(daddr)}"] if daddr else []
        pings = {4: ["icmp type echo-request"], 6: ["icmpv6 type echo-request"]}
        pings[0] = pings[4] + pings[6]
        for match in pings[version] if rule.proto == "ping" else [" ".join(l4)]:
            parts = [*base, *addr, match] if match else [*base, *addr]
            lines.append(" ".join([*parts, f'accept comment "{rule.why}"']))
    return lines


def _render_nftables(rs: Ruleset) -> Rendering:
    how = [
        f"Load with: nft -f FILE. Atomic and re-runnable: it replaces only table {NFT_TABLE}",
        "(the first two statements below), never another tool's table. A drop here is final",
        "even if another table accepts the packet, so the host is filtered whatever else is loaded.",
        f"Remove with: nft delete table {NFT_TABLE}",
    ]
    out = [
        "#!/usr/sbin/nft -f\n",
        _header(rs, Format.NFTABLES, how, rs.notes),
        f"\ntable {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n\ntable {NFT_TABLE} {{\n",
    ]
    chains: list[str] = []
    if rs.rpf_interfaces:
        names = ", ".join(f'"{i}"' for i in rs.rpf_interfaces)
        chains.append(
            "\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n"
            f"\t\tiifname {{ {names} }} fib saddr . iif oif missing drop "
            f'comment "{_RPF_WHY}"\n\t}}\n'
        )
    for hook in rs.filtered:
        body = [
            f"type filter hook {hook} priority filter; policy drop;",
            'ct state established,related accept comment "replies to allowed connections"',
            "ct state invalid drop",
        ]
        if hook is Hook.INPUT:
            body += [
                'iifname "lo" accept',
                f'icmpv6 type {{ {_ND_IN} }} accept comment "IPv6 neighbour discovery"',
            ]
        elif hook is Hook.OUTPUT:
            body += [
                'oifname "lo" accept',
                f'icmpv6 type {{ {_ND_OUT} }} accept comment "IPv6 neighbour discovery"',
            ]
        for rule in rs.of(hook):
            body += _nft_rule(rule)
        chains.append(f"\tchain {hook} {{\n" + "".join(f"\t\t{line}\n" for line in body) + "\t}\n")
    out.append("\n".join(chains))
    out.append("}\n")
    return Rendering(Format.NFTABLES, ((f"zerogate-{rs.spec.role}.nft", "".join(out)),), rs.notes)


# --------------------------------------------------------------------------- iptables


def _render_iptables(rs: Ruleset) -> Rendering:
    notes = [
        *rs.notes,
        "iptables covers IPv4 only: IPv6 traffic is not filtered by this file (use --format nftables, "
        "whose inet table covers both)",
    ]
    how = [
        "Load with: iptables-restore --noflush FILE. --noflush matters: without it iptables-restore",
        "would wipe every other rule in the tables below. Only the ZEROGATE-* chains are (re)filled;",
        "built-in chain policies are not changed. Each ZEROGATE chain ends in a verdict, so a second",
        "load leaves a harmless duplicate jump; to reload cleanly first run e.g.",
        "iptables -D INPUT -j ZEROGATE-INPUT (once per jump below).",
    ]
    out = [_header(rs, Format.IPTABLES, how, notes)]
    if rs.rpf_interfaces:
        out.append(f"*raw\n:{CHAIN_PREFIX}PREROUTING - [0:0]\n-I PREROUTING 1 -j {CHAIN_PREFIX}PREROUTING\n")
        for iface in rs.rpf_interfaces:
            out.append(
                f"-A {CHAIN_PREFIX}PREROUTING -i {iface} -m rpfilter --invert "
                f'-m comment --comment "{_RPF_WHY}" -j DROP\n'
            )
        out.append("COMMIT\n")
    out.append("*filter\n")
    out += [f":{CHAIN_PREFIX}{hook.upper()} - [0:0]\n" for hook in rs.filtered]
    out += [f"-I {hook.upper()} 1 -j {CHAIN_PREFIX}{hook.upper()}\n" for hook in rs.filtered]
    for hook in rs.filtered:
        chain = f"{CHAIN_PREFIX}{hook.upper()}"
        out.append(f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
        out.append(f"-A {chain} -m conntrack --ctstate INVALID -j DROP\n")
        if hook is not Hook.FORWARD:
            out.append(f"-A {chain} {'-i' if hook is Hook.INPUT else '-o'} lo -j ACCEPT\n")
        for rule in rs.of(hook):
            out += [f"-A {chain} {m} -j ACCEPT\n" for m in _ipt_rule(rule)]
        out.append(f"-A {chain} -j DROP\n")
    out.append("COMMIT\n")
    return Rendering(Format.IPTABLES, ((f"zerogate-{rs.spec.role}.rules", "".join(out)),), tuple(notes))


def _ipt_ports(ports: PortRange) -> str:
    return str(ports.first) if ports.first == ports.last else f"{ports.first}:{ports.last}"


def _ipt_rule(rule: Rule) -> list[str]:
    base = [f"-i {rule.iif}"] if rule.iif else []
    base += [f"-o {rule.oif}"] if rule.oif else []
    l4 = ["-p icmp --icmp-type echo-request"] if rule.proto == "ping" else []
    if rule.proto in ("tcp", "udp"):
        l4.append(f"-p {rule.proto}")
        if rule.sport:
            l4.append(f"--sport {_ipt_ports(rule.sport)}")
        if rule.dport:
            l4.append(f"--dport {_ipt_ports(rule.dport)}")
    lines = []
    for version, saddr, daddr in _split_family(rule):
        if version == 6:
            continue
        for s in saddr or (None,):
            for d in daddr or (None,):
                addr = ([f"-s {s}"] if s else []) + ([f"-d {d}"] if d else [])
                lines.append(" ".join([*base, *addr, *l4, f'-m comment --comment "{rule.why}"']))
    return lines


# --------------------------------------------------------------------------- firewalld


def _xml(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _fw_family(version: int) -> dict[str, str]:
    return {"family": f"ipv{version}"} if version else {}


def _fw_add_rule(parent: ET.Element, rule: Rule) -> None:
    """A rule as plain port/source-port elements when it has no addresses, else as rich rules."""
    if not rule.saddr and not rule.daddr and rule.proto in ("tcp", "udp") and (rule.dport or rule.sport):
        tag, port = ("port", rule.dport) if rule.dport else ("source-port", rule.sport)
        ET.SubElement(parent, tag, port=str(port), protocol=rule.proto)
        return
    for version, saddr, daddr in _split_family(rule):
        for s in saddr or (None,):
            for d in daddr or (None,):
                rich = ET.SubElement(parent, "rule", _fw_family(version))
                if s:
                    ET.SubElement(rich, "source", address=str(s))
                if d:
                    ET.SubElement(rich, "destination", address=str(d))
                if rule.proto == "ping":
                    ET.SubElement(rich, "icmp-type", name="echo-request")
                elif rule.proto != "any" and rule.dport:
                    ET.SubElement(rich, "port", port=str(rule.dport), protocol=rule.proto)
                elif rule.proto != "any" and rule.sport:
                    ET.SubElement(rich, "source-port", port=str(rule.sport), protocol=rule.proto)
                elif rule.proto != "any":
                    ET.SubElement(rich, "protocol", value=rule.proto)
                ET.SubElement(rich, "accept")


def _fw_nd(parent: ET.Element, types: Sequence[str]) -> None:
    for name in types:
        rich = ET.SubElement(parent, "rule", family="ipv6")
        ET.SubElement(rich, "icmp-type", name=name)
        ET.SubElement(rich, "accept")


def _fw_text(root: ET.Element, short: str, rs: Ruleset) -> None:
    ET.SubElement(root, "short").text = short
    ET.SubElement(root, "description").text = f"Generated by: {rs.spec.command_line(Format.FIREWALLD)}"


def _fw_bare(rule: Rule) -> bool:
    return not (rule.saddr or rule.daddr or rule.dport or rule.sport) and rule.proto == "any"


def _render_firewalld(rs: Ruleset) -> Rendering:
    """Zones for interfaces, policies for forwarding and output (names <= 17 characters).

    The tunnel goes in zone ``zerogate`` (ACCEPT, forwarding on), exactly as the daemons'
    firewalld integration keeps it, so the two never fight over the interface; a DROP policy
    that runs after the zones then limits where tunnel traffic may be forwarded.
    """
    spec = rs.spec
    short = {spec.tunnel: "tun"}
    if spec.role is Role.CLOUD:
        short |= {spec.mgmt_interface: "mgmt", spec.service_interface: "svc"}
    host_zone = f"zerogate-{_SHORT[spec.role]}"

    def zone_of(iface: str | None) -> str:
        if iface is None:
            return host_zone if spec.role is not Role.CLOUD else "ANY"
        return FIREWALLD_TUNNEL_ZONE if iface == spec.tunnel else f"zerogate-{short[iface]}"

    notes = list(rs.notes)
    zones: dict[str, ET.Element] = {}
    policies: dict[str, ET.Element] = {}

    def zone(iface: str | None) -> ET.Element:
        name = zone_of(iface)
        if name not in zones:
            el = ET.Element("zone", target="DROP")
            _fw_text(el, f"zerogate: {iface or 'host'} ({spec.role})", rs)
            if iface:
                ET.SubElement(el, "interface", name=iface)
            if iface == spec.tunnel:  # exactly what the daemons' firewalld integration keeps up
                el.set("target", "ACCEPT")
                ET.SubElement(el, "forward")
            else:
                _fw_nd(el, ("neighbour-solicitation", "neighbour-advertisement", "router-advertisement"))
            zones[name] = el
        return zones[name]

    def policy(src: str | None, dst: str | None, target: str, priority: int) -> ET.Element:
        ingress = "HOST" if src == "HOST" else zone_of(src) if src else "ANY"
        egress = zone_of(dst) if dst else "ANY"
        first = "out" if src == "HOST" else short.get(src or "", "any")
        name = f"zerogate-{first}-{short.get(dst or '', 'any')}"
        if name not in policies:
            el = ET.Element("policy", target=target, priority=str(priority))
            _fw_text(el, f"zerogate: {ingress} to {egress} ({spec.role})", rs)
            ET.SubElement(el, "ingress-zone", name=ingress)
            ET.SubElement(el, "egress-zone", name=egress)
            policies[name] = el
        return policies[name]

    zone(spec.tunnel)
    if spec.role is not Role.CLOUD:
        zone(None)
        notes.append(
            f"firewalld: zone {host_zone} is not bound to an interface; bind the internet-facing one "
            f"(firewall-cmd --permanent --zone={host_zone} --change-interface=IFACE) or make it the "
            f"default zone (firewall-cmd --set-default-zone={host_zone})"
        )
    for rule in rs.of(Hook.INPUT):
        if rule.iif != spec.tunnel:  # the tunnel zone accepts everything already
            _fw_add_rule(zone(rule.iif), rule)
    for rule in rs.of(Hook.FORWARD):
        if rule.iif == rule.oif == spec.tunnel and _fw_bare(rule):
            continue  # the tunnel zone's <forward/>
        zone(rule.iif)
        if rule.oif:
            zone(rule.oif)
        _fw_add_rule(policy(rule.iif, rule.oif, "CONTINUE", -30), rule)
    if Hook.FORWARD in rs.filtered:
        # The tunnel zone's ACCEPT would let tunnel traffic out to any zone: only the rules above may.
        # A positive priority runs after the zone's own rules, so its <forward/> (tunnel to tunnel,
        # the gateway's job) still passes; negative-priority policies run before the zones.
        catch_all = policy(spec.tunnel, None, "DROP", 20)
        catch_all.attrib.update(target="DROP", priority="20")
    if Hook.OUTPUT in rs.filtered:
        final = policy("HOST", None, "DROP", -10)
        _fw_nd(final, ("neighbour-solicitation", "neighbour-advertisement", "router-solicitation"))
        for rule in rs.of(Hook.OUTPUT):
            if rule.oif is None:
                _fw_add_rule(final, rule)
            elif _fw_bare(rule):
                zone(rule.oif)
                policy("HOST", rule.oif, "ACCEPT", -20)
            else:
                zone(rule.oif)
                _fw_add_rule(policy("HOST", rule.oif, "CONTINUE", -20), rule)
    if rs.rpf_interfaces:
        notes.append(
            "firewalld checks reverse paths for IPv6 only (IPv6_rpfilter); for IPv4 anti-spoofing set "
            + ", ".join(f"net.ipv4.conf.{i}.rp_filter=1" for i in rs.rpf_interfaces)
        )
    files = [(f"zones/{n}.xml", _xml(el)) for n, el in zones.items()]
    files += [(f"policies/{n}.xml", _xml(el)) for n, el in policies.items()]
    too_long = [n for n, _ in files if len(n.rsplit("/", 1)[1]) - 4 > 17]
    assert not too_long, f"firewalld names are limited to 17 characters: {too_long}"
    return Rendering(Format.FIREWALLD, tuple(files), tuple(notes))


# --------------------------------------------------------------------------- cloud security groups


@dataclass(frozen=True)
class CloudRule:
    """A security-group rule: stateful, no interfaces, no source ports; ``ports`` None = all."""

    ingress: bool
    proto: Proto
    ports: PortRange | None
    cidrs: tuple[Network, ...]
    why: str


def cloud_groups(rs: Ruleset) -> tuple[dict[str, list[CloudRule]], list[str]]:
    """The ruleset as security groups (one per network interface) plus what could not be kept."""
    spec = rs.spec
    if spec.role is Role.CLOUD:
        group_of = {spec.mgmt_interface: "mgmt", spec.service_interface: "service"}
        groups: dict[str, list[CloudRule]] = {"mgmt": [], "service": []}
    else:
        group_of, groups = {}, {_SHORT[spec.role]: []}
    default_group = next(iter(groups))
    notes: list[str] = []

    def add(group: str | None, cr: CloudRule) -> None:
        target = groups[group_of.get(group or "", default_group)]
        if not any(
            (c.ingress, c.proto, c.ports, c.cidrs) == (cr.ingress, cr.proto, cr.ports, cr.cidrs)
            for c in target
        ):
            target.append(cr)

    tunnel_only, forwards = False, False
    for rule in rs.rules:
        if rule.host_only:
            continue
        if rule.proto == "ping":  # only ever inside the tunnel, which a security group cannot see
            tunnel_only = True
            continue
        if rule.hook is Hook.INPUT:
            if rule.iif == spec.tunnel:
                tunnel_only = True
                continue
            add(rule.iif, CloudRule(True, rule.proto, rule.dport, rule.saddr or _ANYWHERE, rule.why))
        elif rule.hook is Hook.OUTPUT:
            if rule.oif == spec.tunnel:
                tunnel_only = True
                continue
            ports = rule.dport
            if rule.sport and not rule.dport:
                notes.append(
                    f"a security group cannot match source ports: {rule.why!r} (source port {rule.sport}) "
                    f"is widened to all {rule.proto.upper()} ports out"
                )
            add(rule.oif, CloudRule(False, rule.proto, ports, rule.daddr or _ANYWHERE, rule.why))
        else:
            if rule.iif == spec.tunnel and rule.oif == spec.tunnel:
                tunnel_only = True
                continue
            forwards = True
            if rule.iif != spec.tunnel:
                add(rule.iif, CloudRule(True, rule.proto, rule.dport, rule.saddr or _ANYWHERE, rule.why))
            if rule.oif != spec.tunnel:
                add(rule.oif, CloudRule(False, rule.proto, rule.dport, rule.daddr or _ANYWHERE, rule.why))
    if tunnel_only:
        notes.append(
            f"rules on the tunnel interface {spec.tunnel} cannot be expressed: a security group sees only "
            "the encrypted WireGuard UDP; render a host format (nftables) for them"
        )
    if forwards:
        notes.append(
            "this instance forwards packets: disable the source/destination check (AWS) or enable IP "
            "forwarding on the NIC (Azure); the interface binding and anti-spoofing of the host rules "
            "need a host format (nftables) as well"
        )
    return groups, notes


def _group_name(spec: FirewallSpec, group: str) -> str:
    return f"zerogate-{spec.role}" if group == _SHORT[spec.role] else f"zerogate-{spec.role}-{group}"


def _group_description(spec: FirewallSpec, group: str) -> str:
    if spec.role is Role.CLOUD:
        iface = spec.mgmt_interface if group == "mgmt" else spec.service_interface
        return f"zerogate cloud-connector {group} interface ({iface})"
    return f"zerogate {spec.role}"


def _split_v(nets: tuple[Network, ...]) -> tuple[list[str], list[str]]:
    return [str(n) for n in nets if n.version == 4], [str(n) for n in nets if n.version == 6]


def _render_cloud(rs: Ruleset, fmt: Format) -> Rendering:
    groups, cloud_notes = cloud_groups(rs)
    notes = [*rs.notes, *cloud_notes]
    if fmt is Format.AWS_SG:
        notes.append(
            "a new AWS security group allows all egress by default: revoke that rule (IpProtocol -1, "
            "0.0.0.0/0) so only the egress below remains"
        )
        doc: dict[str, Any] = {
            "SecurityGroups": [_aws_group(rs.spec, g, rules) for g, rules in groups.items()]
        }
        text = json.dumps(doc, indent=2) + "\n"
        return Rendering(fmt, ((f"zerogate-{rs.spec.role}.aws-sg.json", text),), tuple(notes))
    if fmt is Format.AZURE_NSG:
        notes.append(
            "explicit deny-all rules at priority 4095/4096 override Azure's default AllowVnet and "
            "AllowAzureLoadBalancer rules, so only the rules above them allow traffic"
        )
        text = json.dumps(_azure_template(rs.spec, groups, notes), indent=2) + "\n"
        return Rendering(fmt, ((f"zerogate-{rs.spec.role}.azure-nsg.json", text),), tuple(notes))
    return Rendering(fmt, ((f"zerogate-{rs.spec.role}.tf", _terraform(rs, groups, notes)),), tuple(notes))


def _aws_permission(cr: CloudRule) -> dict[str, Any]:
    perm: dict[str, Any] = {"IpProtocol": "-1" if cr.proto == "any" else cr.proto}
    if cr.proto != "any":
        ports = cr.ports or PortRange(0, 65535)
        perm["FromPort"], perm["ToPort"] = ports.first, ports.last
    v4, v6 = _split_v(cr.cidrs)
    perm["IpRanges"] = [{"CidrIp": c, "Description": cr.why} for c in v4]
    perm["Ipv6Ranges"] = [{"CidrIpv6": c, "Description": cr.why} for c in v6]
    return perm


def _aws_group(spec: FirewallSpec, group: str, rules: list[CloudRule]) -> dict[str, Any]:
    return {
        "GroupName": _group_name(spec, group),
        "Description": _group_description(spec, group),
        "IpPermissions": [_aws_permission(r) for r in rules if r.ingress],
        "IpPermissionsEgress": [_aws_permission(r) for r in rules if not r.ingress],
    }


def _azure_rules(rules: list[CloudRule]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    next_priority = {True: 100, False: 2000}
    for cr in rules:
        for fam_nets in (tuple(n for n in cr.cidrs if n.version == v) for v in (4, 6)):
            if not fam_nets:
                continue
            remote: list[str] = ["*"] if set(_ANYWHERE) <= set(cr.cidrs) else [str(n) for n in fam_nets]
            direction = "in" if cr.ingress else "out"
            base = f"zg-{direction}-{cr.proto}-{cr.ports or 'all'}" + (
                "-v6" if fam_nets[0].version == 6 else ""
            )
            name, i = base, 2
            while name in names:
                name, i = f"{base}-{i}", i + 1
            names.add(name)
            props: dict[str, Any] = {
                "description": cr.why[:140],
                "priority": next_priority[cr.ingress],
                "direction": "Inbound" if cr.ingress else "Outbound",
                "access": "Allow",
                "protocol": {"tcp": "Tcp", "udp": "Udp", "any": "*"}[cr.proto],
                "sourcePortRange": "*",
            }
            next_priority[cr.ingress] += 10
            key_remote, key_local = ("source", "destination") if cr.ingress else ("destination", "source")
            if len(remote) == 1:
                props[f"{key_remote}AddressPrefix"] = remote[0]
            else:
                props[f"{key_remote}AddressPrefixes"] = remote
            props[f"{key_local}AddressPrefix"] = "*"
            props["destinationPortRange"] = str(cr.ports) if cr.ports else "*"
            out.append({"name": name, "properties": props})
            if remote == ["*"]:
                break
    for ingress, priority in ((True, 4096), (False, 4095)):
        out.append(
            {
                "name": f"zg-deny-all-{'in' if ingress else 'out'}",
                "properties": {
                    "description": "zerogate: everything not allowed above",
                    "priority": priority,
                    "direction": "Inbound" if ingress else "Outbound",
                    "access": "Deny",
                    "protocol": "*",
                    "sourcePortRange": "*",
                    "sourceAddressPrefix": "*",
                    "destinationAddressPrefix": "*",
                    "destinationPortRange": "*",
                },
            }
        )
    assert max(next_priority.values()) < 4000, "too many rules for the Azure priority plan"
    return out


def _azure_template(
    spec: FirewallSpec, groups: dict[str, list[CloudRule]], notes: list[str]
) -> dict[str, Any]:
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {
            "description": f"Generated by: {spec.command_line(Format.AZURE_NSG)}",
            "notes": notes,
        },
        "parameters": {
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        },
        "resources": [
            {
                "type": "Microsoft.Network/networkSecurityGroups",
                "apiVersion": "2023-09-01",
                "name": _group_name(spec, group),
                "location": "[parameters('location')]",
                "tags": {"zerogate-role": str(spec.role)},
                "properties": {"securityRules": _azure_rules(rules)},
            }
            for group, rules in groups.items()
        ],
    }


def _hcl_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def _terraform(rs: Ruleset, groups: dict[str, list[CloudRule]], notes: list[str]) -> str:
    how = [
        "Terraform: aws_security_group resources, one per network interface. Terraform removes AWS's",
        "default allow-all egress rule, so only the egress blocks below remain.",
    ]
    out = [
        _header(rs, Format.TERRAFORM, how, notes),
        '\nvariable "vpc_id" {\n  description = "VPC to create the security groups in"\n'
        "  type        = string\n}\n",
    ]
    for group, rules in groups.items():
        name = _group_name(rs.spec, group)
        out.append(f'\nresource "aws_security_group" "{name.replace("-", "_")}" {{\n')
        out.append(f'  name        = "{name}"\n  description = "{_group_description(rs.spec, group)}"\n')
        out.append("  vpc_id      = var.vpc_id\n")
        for ingress in (True, False):
            kind = "ingress" if ingress else "egress"
            chosen = [r for r in rules if r.ingress is ingress]
            if not chosen:
                out.append(f"\n  {kind} = []\n")
            for cr in chosen:
                ports = cr.ports or PortRange(0, 65535)
                first, last = (0, 0) if cr.proto == "any" else (ports.first, ports.last)
                v4, v6 = _split_v(cr.cidrs)
                block: list[tuple[str, str]] = [
                    ("description", json.dumps(cr.why)),
                    ("protocol", '"-1"' if cr.proto == "any" else f'"{cr.proto}"'),
                    ("from_port", str(first)),
                    ("to_port", str(last)),
                ]
                block += [("cidr_blocks", _hcl_list(v4))] if v4 else []
                block += [("ipv6_cidr_blocks", _hcl_list(v6))] if v6 else []
                width = max(len(k) for k, _ in block)
                lines = [f"    {k.ljust(width)} = {v}\n" for k, v in block]
                out.append(f"\n  {kind} {{\n" + "".join(lines) + "  }\n")
        out.append(
            f'\n  tags = {{\n    Name            = "{name}"\n'
            f'    "zerogate-role" = "{rs.spec.role}"\n  }}\n}}\n'
        )
    return "".join(out)
