"""What each zerogate role needs from the host firewall: :func:`role_ruleset` (pure).

The result is a :class:`~zerogate.model.firewall.Ruleset` of allow rules per hook;
the output modules of this package render it (nftables, iptables, firewalld, cloud).
"""

from __future__ import annotations

import ipaddress

from zerogate.model.firewall import FirewallSpec, Hook, PortRange, Role, Rule, Ruleset


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
