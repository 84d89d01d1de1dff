"""nftables output: one own table (``inet zerogate_host``), loaded atomically with ``nft -f`` (pure).

The text is built with :mod:`zerogate.model.nft`, the same builders the gateway and
connector planners use for their ``table inet zerogate`` (atomic replace, base-chain
lines, conntrack preamble, interface / per-family address / port matches, comments).
"""

from __future__ import annotations

from zerogate.deploy.firewall.rendering import RPF_WHY, Rendering, header, split_family
from zerogate.deploy.firewall.spec import NFT_TABLE, Format
from zerogate.model import nft
from zerogate.model.firewall import Hook, Network, Rule, Ruleset

_ND_IN = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert")
_ND_OUT = ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit", "mld2-listener-report")
_PINGS = {4: [nft.icmp_type("icmp", ["echo-request"])], 6: [nft.icmp_type("icmpv6", ["echo-request"])]}
_PINGS[0] = _PINGS[4] + _PINGS[6]


def _nets(nets: tuple[Network, ...]) -> str:
    return nft.one_or_set([str(n) for n in nets])


def _nft_rule(rule: Rule) -> list[str]:
    base = [nft.iifname(rule.iif)] if rule.iif else []
    base += [nft.oifname(rule.oif)] if rule.oif else []
    l4: list[str] = []
    if rule.proto in ("tcp", "udp"):
        l4 += [nft.port(rule.proto, "sport", str(rule.sport))] if rule.sport else []
        l4 += [nft.port(rule.proto, "dport", str(rule.dport))] if rule.dport else []
        l4 = l4 or [nft.l4proto(rule.proto)]
    why = nft.comment(rule.why)
    lines = []
    for version, saddr, daddr in split_family(rule):
        fam = "ip" if version == 4 else "ip6"
        addr = [nft.address(fam, "saddr", _nets(saddr))] if saddr else []
        addr += [nft.address(fam, "daddr", _nets(daddr))] if daddr else []
        for match in _PINGS[version] if rule.proto == "ping" else [nft.statement(*l4)]:
            lines.append(nft.statement(*base, *addr, match, "accept", why))
    return lines


def render_nftables(rs: Ruleset) -> Rendering:
    how = [
        f"Load with: nft -f FILE. Atomic and re-runnable: it replaces only table {NFT_TABLE}",
        "(the first two statements below), never another tool's table. A drop here is final",
        "even if another table accepts the packet, so the host is filtered whatever else is loaded.",
        f"Remove with: nft delete table {NFT_TABLE}",
    ]
    family, name = NFT_TABLE.split(" ")
    chains: list[str] = []
    if rs.rpf_interfaces:
        rpf = nft.statement(
            nft.iifname_in(rs.rpf_interfaces), "fib saddr . iif oif missing drop", nft.comment(RPF_WHY)
        )
        chains.append(
            nft.chain(
                "prerouting", [nft.base_chain("filter", "prerouting", "raw", "accept"), rpf], indent="\t"
            )
        )
    for hook in rs.filtered:
        body = [
            nft.base_chain("filter", str(hook), "filter", "drop"),
            *nft.conntrack_preamble("replies to allowed connections"),
        ]
        nd = nft.comment("IPv6 neighbour discovery")
        if hook is Hook.INPUT:
            body += [
                nft.statement(nft.iifname("lo"), "accept"),
                nft.statement(nft.icmp_type("icmpv6", _ND_IN), "accept", nd),
            ]
        elif hook is Hook.OUTPUT:
            body += [
                nft.statement(nft.oifname("lo"), "accept"),
                nft.statement(nft.icmp_type("icmpv6", _ND_OUT), "accept", nd),
            ]
        for rule in rs.of(hook):
            body += _nft_rule(rule)
        chains.append(nft.chain(str(hook), body, indent="\t"))
    table = nft.replace_table(family, name, "\n".join(chains), gap="\n")
    text = "#!/usr/sbin/nft -f\n" + header(rs, Format.NFTABLES, how, rs.notes) + "\n" + table
    return Rendering(Format.NFTABLES, ((f"zerogate-{rs.spec.role}.nft", text),), rs.notes)
