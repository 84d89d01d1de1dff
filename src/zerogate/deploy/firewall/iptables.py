"""iptables output: own ``ZEROGATE-*`` chains for ``iptables-restore --noflush``, IPv4 only (pure)."""

from __future__ import annotations

from zerogate.deploy.firewall.rendering import RPF_WHY, Rendering, header, split_family
from zerogate.deploy.firewall.spec import Format
from zerogate.model.firewall import Hook, PortRange, Rule, Ruleset

CHAIN_PREFIX = "ZEROGATE-"


def render_iptables(rs: Ruleset) -> Rendering:
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
    out = [header(rs, Format.IPTABLES, how, notes)]
    if rs.rpf_interfaces:
        out.append(f"*raw\n:{CHAIN_PREFIX}PREROUTING - [0:0]\n-I PREROUTING 1 -j {CHAIN_PREFIX}PREROUTING\n")
        for iface in rs.rpf_interfaces:
            out.append(
                f"-A {CHAIN_PREFIX}PREROUTING -i {iface} -m rpfilter --invert "
                f'-m comment --comment "{RPF_WHY}" -j DROP\n'
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
    for version, saddr, daddr in split_family(rule):
        if version == 6:
            continue
        for s in saddr or (None,):
            for d in daddr or (None,):
                addr = ([f"-s {s}"] if s else []) + ([f"-d {d}"] if d else [])
                lines.append(" ".join([*base, *addr, *l4, f'-m comment --comment "{rule.why}"']))
    return lines
