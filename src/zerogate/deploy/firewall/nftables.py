"""nftables output: one own table (``inet zerogate_host``), loaded atomically with ``nft -f`` (pure).

Later step (not done here): the gateway and connector planners build their own
``table inet zerogate`` text. What they and this renderer would share is the atomic
replace idiom (``table T {}`` / ``delete table T`` / ``table T {...}``), the base-chain
line (``type filter hook H priority P; policy X;``), the conntrack preamble
(established/related accept, invalid drop), and one match renderer (``iifname`` /
``oifname``, per-family address sets as in :func:`_nft_rule`, port ranges, comments).
"""

from __future__ import annotations

from zerogate.deploy.firewall.rendering import RPF_WHY, Rendering, header, split_family
from zerogate.deploy.firewall.spec import NFT_TABLE, Format
from zerogate.model.firewall import Hook, Network, Rule, Ruleset

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
    for version, saddr, daddr in split_family(rule):
        fam = "ip" if version == 4 else "ip6"
        addr = [f"{fam} saddr {_nft_set(saddr)}"] if saddr else []
        addr += [f"{fam} daddr {_nft_set(daddr)}"] if daddr else []
        pings = {4: ["icmp type echo-request"], 6: ["icmpv6 type echo-request"]}
        pings[0] = pings[4] + pings[6]
        for match in pings[version] if rule.proto == "ping" else [" ".join(l4)]:
            parts = [*base, *addr, match] if match else [*base, *addr]
            lines.append(" ".join([*parts, f'accept comment "{rule.why}"']))
    return lines


def render_nftables(rs: Ruleset) -> Rendering:
    how = [
        f"Load with: nft -f FILE. Atomic and re-runnable: it replaces only table {NFT_TABLE}",
        "(the first two statements below), never another tool's table. A drop here is final",
        "even if another table accepts the packet, so the host is filtered whatever else is loaded.",
        f"Remove with: nft delete table {NFT_TABLE}",
    ]
    out = [
        "#!/usr/sbin/nft -f\n",
        header(rs, Format.NFTABLES, how, rs.notes),
        f"\ntable {NFT_TABLE} {{}}\ndelete table {NFT_TABLE}\n\ntable {NFT_TABLE} {{\n",
    ]
    chains: list[str] = []
    if rs.rpf_interfaces:
        names = ", ".join(f'"{i}"' for i in rs.rpf_interfaces)
        chains.append(
            "\tchain prerouting {\n\t\ttype filter hook prerouting priority raw; policy accept;\n"
            f"\t\tiifname {{ {names} }} fib saddr . iif oif missing drop "
            f'comment "{RPF_WHY}"\n\t}}\n'
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
