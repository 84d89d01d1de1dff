"""What a segment asset's own firewall must hold, as nftables text (pure).

Enforcement on a Linux asset is one table, ``inet zerogate_segment``, on the
input hook, loaded with ``nft -f`` as an atomic replace (never ``flush
ruleset``, never another tool's table): removing it is one ``delete table``
and whatever else the host runs keeps its own tables.

The input chain always starts with the management allow-list, so that no
approved-rule mistake can cut the segment server off: loopback, replies
(``ct state established,related``; ``invalid`` dropped), the ICMP and ICMPv6
needed for path MTU, errors and neighbour discovery, DHCP client replies, and
SSH on the sshd ports really in use from the segment server and the declared
jump hosts. Then, per mode:

- ``protected``: the approved rules (accept), then the just-in-time openings (sets
  ``jit4`` / ``jit6`` of ``source . protocol . port`` with a kernel timeout, so an
  opening closes by itself even when the server is down; a re-enforcement carries
  the active ones with their remaining time), then drop (the chain policy too);
- ``learning_with_blocks``: policy accept; only the explicit deny rules drop;
- ``monitored`` / ``learning``: no enforcement table at all (:func:`render_asset_table`
  returns ``None``; :func:`removal_script` takes ours away).

Errors: :class:`SegmentPlanError` (a ``ValueError``) when the table would lock
the management path out (no server address, no SSH port).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from zerogate.model import nft
from zerogate.model.segment import Address
from zerogate.model.snapshot import JitOpening, SegmentAsset, SegmentRule

TABLE_FAMILY = "inet"
TABLE_NAME = "zerogate_segment"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
ENFORCING_MODES = frozenset({"protected", "learning_with_blocks"})

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network

_ICMP = ("echo-request", "destination-unreachable", "time-exceeded", "parameter-problem")
_ICMPV6 = (
    "echo-request", "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem",
    "nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-advert",
)  # fmt: skip
_FAMILIES = ((4, "ip"), (6, "ip6"))
JIT_SETS = ((4, "ip", "jit4", "ipv4_addr"), (6, "ip6", "jit6", "ipv6_addr"))
JIT_KEY_TYPE = "inet_proto . inet_service"


class SegmentPlanError(ValueError):
    """The asset's table cannot be rendered safely; the message says what is missing."""


def _prefixes(items: Iterable[Address | Prefix]) -> list[Prefix]:
    """Addresses as host prefixes, prefixes as they are; overlaps collapsed (nft refuses
    overlapping intervals in one set), IPv4 first, each family in address order."""
    nets = [ipaddress.ip_network(i) for i in items]
    v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
    return [*v4, *v6]


def _text(prefix: Prefix) -> str:
    return str(prefix.network_address) if prefix.num_addresses == 1 else str(prefix)


def _by_family(prefixes: Sequence[Prefix]) -> list[tuple[str, list[str]]]:
    """(``ip`` / ``ip6``, the prefixes of that family as text) for each family present."""
    out = []
    for version, fam in _FAMILIES:
        texts = [_text(p) for p in prefixes if p.version == version]
        if texts:
            out.append((fam, texts))
    return out


def _management(ssh_sources: Sequence[Prefix], ssh_ports: Sequence[int]) -> list[str]:
    ports = nft.one_or_set([str(p) for p in sorted(set(ssh_ports))])
    lines = [
        nft.statement(nft.iifname("lo"), "accept", nft.comment("loopback")),
        *nft.conntrack_preamble("replies to allowed connections"),
        nft.statement(nft.icmp_type("icmp", _ICMP), "accept"),
        nft.statement(
            nft.icmp_type("icmpv6", _ICMPV6), "accept", nft.comment("errors and neighbour discovery")
        ),
        nft.statement(
            nft.port("udp", "sport", 67), nft.port("udp", "dport", 68), "accept", nft.comment("DHCP")
        ),
        nft.statement(
            nft.address("ip6", "saddr", "fe80::/10"),
            nft.port("udp", "sport", 547),
            nft.port("udp", "dport", 546),
            "accept",
            nft.comment("DHCPv6"),
        ),
    ]
    for fam, sources in _by_family(ssh_sources):
        lines.append(
            nft.statement(
                nft.address(fam, "saddr", nft.one_or_set(sources)),
                nft.port("tcp", "dport", ports),
                "accept",
                nft.comment("SSH from the segment server and jump hosts"),
            )
        )
    return lines


def _rule(rule: SegmentRule) -> list[str]:
    """One snapshot rule as one statement per address family it names (one if it names none)."""
    dport = nft.port(rule.protocol, "dport", nft.port_range(rule.port_first, rule.port_last))
    why = nft.comment(f"zerogate rule {rule.rule_id}")
    if not rule.sources:
        return [nft.statement(dport, rule.action, why)]
    return [
        nft.statement(nft.address(fam, "saddr", nft.one_or_set(texts)), dport, rule.action, why)
        for fam, texts in _by_family(_prefixes(rule.sources))
    ]


def jit_set_name(opening: JitOpening) -> str:
    """``jit4`` or ``jit6``: the set that holds ``opening`` (by its source's family)."""
    return "jit4" if opening.source.version == 4 else "jit6"


def jit_key(opening: JitOpening) -> str:
    """The element key ``source . protocol . port`` (typed fields: nothing to quote)."""
    return nft.concat(str(opening.source), opening.protocol, str(opening.port))


def remaining_seconds(opening: JitOpening, now: datetime) -> int:
    """Whole seconds until ``opening`` expires, rounded up (0: already expired)."""
    return max(0, math.ceil((opening.expires_at - now).total_seconds()))


def jit_element(opening: JitOpening, now: datetime) -> str | None:
    """``source . proto . port timeout Ns`` (at least 1 s), or ``None`` once expired."""
    seconds = remaining_seconds(opening, now)
    return f"{jit_key(opening)} timeout {seconds}s" if seconds > 0 else None


def _jit_sets(openings: Sequence[JitOpening], now: datetime) -> list[str]:
    """The two set definitions, each with its family's active openings (latest expiry per key)."""
    latest: dict[str, JitOpening] = {}
    for o in openings:
        key = jit_key(o)
        if key not in latest or o.expires_at > latest[key].expires_at:
            latest[key] = o
    lines = []
    for version, _fam, name, addr_type in JIT_SETS:
        elements = [
            e
            for _, o in sorted(latest.items())
            if o.source.version == version and (e := jit_element(o, now)) is not None
        ]
        body = f" elements = {nft.anonymous_set(elements)};" if elements else ""
        lines.append(
            f"\tset {nft.identifier(name, 'set name')} {{ type {nft.concat(addr_type, JIT_KEY_TYPE)}; "
            f"flags timeout;{body} }}\n"
        )
    return lines


def _jit_rules() -> list[str]:
    return [
        nft.statement(
            nft.concat(f"{fam} saddr", nft.META_L4PROTO, "th dport"),
            nft.set_ref(name),
            "accept",
            nft.comment("just-in-time openings"),
        )
        for _v, fam, name, _t in JIT_SETS
    ]


def render_asset_table(
    asset: SegmentAsset,
    servers: Sequence[Address | Prefix],
    ssh_ports: Sequence[int],
    now: datetime | None = None,
) -> str | None:
    """The ``nft -f`` script for ``asset`` in its mode, or ``None`` when the mode enforces nothing.

    ``servers``: the segment server's source address(es) as the asset sees them;
    ``ssh_ports``: the ports sshd really listens on (from the preflight's ``ss``);
    ``now``: the time the openings' remaining timeouts count from (default: now).
    """
    if asset.mode not in ENFORCING_MODES:
        return None
    if not servers:
        raise SegmentPlanError(
            f"asset {asset.name}: no segment server address to allow SSH from; refusing to render a "
            "table that would lock the server out"
        )
    if not ssh_ports:
        raise SegmentPlanError(f"asset {asset.name}: no sshd port known (run the preflight first)")
    if any(not 1 <= p <= 65535 for p in ssh_ports):
        raise SegmentPlanError(f"asset {asset.name}: SSH ports must be 1-65535, not {list(ssh_ports)}")
    protected = asset.mode == "protected"
    body = [
        nft.base_chain("filter", "input", "filter", "drop" if protected else "accept"),
        *_management(_prefixes([*servers, *asset.jump_hosts]), ssh_ports),
    ]
    wanted = "accept" if protected else "drop"
    for rule in sorted(asset.rules, key=lambda r: r.rule_id):
        if rule.action == wanted:
            body += _rule(rule)
    sets: list[str] = []
    if protected:
        body += _jit_rules()
        body.append(nft.statement("counter", "drop", nft.comment("not approved")))
        sets = _jit_sets(asset.jit_openings, now or datetime.now(UTC))
    header = (
        f"#!/usr/sbin/nft -f\n# zerogate segment: asset {asset.name}, mode {asset.mode}, "
        f"revision {asset.rules_revision}\n# Remove with: nft delete table {TABLE}\n"
    )
    chain = nft.chain("input", body, indent="\t")
    return header + nft.replace_table(TABLE_FAMILY, TABLE_NAME, "".join(sets) + chain)


def removal_script() -> str:
    """An ``nft -f`` script that removes our table, whether it exists or not (idempotent)."""
    ref = nft.table_ref(TABLE_FAMILY, TABLE_NAME)
    return f"table {ref} {{}}\ndelete table {ref}\n"
