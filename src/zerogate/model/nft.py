"""nftables text builders shared by every renderer of an nftables table (pure).

The gateway's policy table, the connector's table and the host firewall file are
all written with these pieces, so the idioms are spelled once: the atomic table
replace (``table F N {}`` / ``delete table F N`` / ``table F N {...}`` in one
``nft -f``), base-chain lines, the conntrack preamble, set definitions, match
pieces (``iifname`` / ``oifname``, address and port matches, concatenations)
and comments. Each builder returns text without indentation or newline unless
it renders a block (:func:`chain`, :func:`replace_table`).

Errors: :class:`NftTextError` (a :class:`ValueError`) when a name, comment or
keyword cannot be carried safely: quoted text may hold no quote, backslash or
control/invisible character (so it can never end its string and start a
statement of its own), identifiers are plain words, keywords come from nft's
own vocabulary. Set elements and addresses are not checked here: callers pass
typed values (``ipaddress`` objects, snapshot fields validated on parse).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from zerogate.model.text import INVISIBLE_CATEGORIES

FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
CHAIN_TYPES = frozenset({"filter", "nat", "route"})
HOOKS = frozenset({"prerouting", "input", "forward", "output", "postrouting", "ingress", "egress"})
POLICIES = frozenset({"accept", "drop"})
PRIORITIES = frozenset({"raw", "mangle", "dstnat", "filter", "security", "srcnat", "out"})
COMMENT_MAX = 128  # nft refuses longer comments ("128 characters maximum allowed")
IFNAME_MAX = 15  # IFNAMSIZ minus the terminating NUL; nft refuses longer names

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORBIDDEN = frozenset("\"'\\")


class NftTextError(ValueError):
    """A name, comment or keyword that nftables text cannot carry safely."""


def _checked(text: str, what: str) -> str:
    if not text:
        raise NftTextError(f"empty {what}: nftables needs a non-empty string")
    for ch in text:
        if ch in _FORBIDDEN or unicodedata.category(ch) in INVISIBLE_CATEGORIES:
            raise NftTextError(
                f"{what} {text!r} holds {ch!r}: quotes, backslashes and control or invisible "
                "characters are refused in nftables text; choose another"
            )
    return text


def quoted(text: str, what: str = "name") -> str:
    """``"text"``, refusing what could end the string early or hide in it."""
    return f'"{_checked(text, what)}"'


def identifier(name: str, what: str = "identifier") -> str:
    """A table, chain or set name: a letter or ``_``, then letters, digits, ``_``."""
    if not _IDENTIFIER.fullmatch(name):
        raise NftTextError(f"{what} {name!r} is not a plain nftables name (letters, digits, '_')")
    return name


def _keyword(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise NftTextError(f"{what} {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def comment(text: str) -> str:
    """``comment "text"``; nft keeps at most 128 bytes."""
    if len(text.encode()) > COMMENT_MAX:
        raise NftTextError(f"comment {text!r} is longer than nft's {COMMENT_MAX} bytes; shorten it")
    return f"comment {quoted(text, 'comment')}"


def statement(*parts: str) -> str:
    """The non-empty parts joined with spaces (matches, then a verdict, then a comment)."""
    return " ".join(p for p in parts if p)


# --- tables and chains ------------------------------------------------------


def table_ref(family: str, name: str) -> str:
    """``family name``, e.g. ``inet zerogate``."""
    return f"{_keyword(family, FAMILIES, 'table family')} {identifier(name, 'table name')}"


def replace_table(family: str, name: str, body: str, *, gap: str = "") -> str:
    """A script that swaps table ``family name`` for ``body`` in one transaction.

    Declaring the table first makes the delete valid when it does not exist
    yet; ``nft -f`` applies the whole file or nothing. ``gap`` goes between the
    delete and the new definition (a blank line in a file people read).
    """
    ref = table_ref(family, name)
    return f"table {ref} {{}}\ndelete table {ref}\n{gap}table {ref} {{\n{body}}}\n"


def base_chain(type_: str, hook: str, priority: str | int, policy: str) -> str:
    """``type T hook H priority P; policy X;`` (P: a named priority or a number)."""
    if isinstance(priority, str):
        _keyword(priority, PRIORITIES, "chain priority")
    return (
        f"type {_keyword(type_, CHAIN_TYPES, 'chain type')} hook {_keyword(hook, HOOKS, 'hook')} "
        f"priority {priority}; policy {_keyword(policy, POLICIES, 'chain policy')};"
    )


def chain(name: str, lines: Iterable[str], *, indent: str = "  ") -> str:
    """``chain name { ... }`` with one line per statement, indented one level deeper."""
    inner = indent * 2
    body = "".join(f"{inner}{line}\n" for line in lines)
    return f"{indent}chain {identifier(name, 'chain name')} {{\n{body}{indent}}}\n"


def ct_state(*states: str) -> str:
    """``ct state a,b``."""
    return f"ct state {','.join(states)}"


def conntrack_preamble(why: str | None = None) -> list[str]:
    """Replies pass, invalid packets drop: the first lines of a filtering chain.
    ``why`` comments the accept."""
    return [
        statement(ct_state("established", "related"), "accept", comment(why) if why else ""),
        statement(ct_state("invalid"), "drop"),
    ]


# --- sets ---------------------------------------------------------------------


def concat(*parts: str) -> str:
    """A concatenation: of types (``ipv4_addr . inet_service``), keys or elements."""
    return " . ".join(parts)


def set_definition(
    name: str,
    type_: str,
    elements: Sequence[str] = (),
    *,
    interval: bool = False,
    auto_merge: bool = False,
) -> str:
    """``set name { type T; [flags interval;] [auto-merge;] [elements = { ... };] }``."""
    flags = " flags interval;" if interval else ""
    merge = " auto-merge;" if auto_merge else ""
    body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    return f"set {identifier(name, 'set name')} {{ type {type_};{flags}{merge}{body} }}"


def set_ref(name: str) -> str:
    """``@name``: a named set as a match value."""
    return f"@{identifier(name, 'set name')}"


def anonymous_set(items: Iterable[str]) -> str:
    """``{ a, b }`` (braces even around one item)."""
    return f"{{ {', '.join(items)} }}"


def one_or_set(items: Sequence[str]) -> str:
    """The item alone when there is one, else an anonymous set."""
    return items[0] if len(items) == 1 else anonymous_set(items)


def element_update(verb: str, family: str, table: str, set_name: str, items: Iterable[str]) -> str:
    """``add|delete element F T S { ... }``: a change of a set without a reload."""
    _keyword(verb, frozenset({"add", "delete"}), "element verb")
    return (
        f"{verb} element {table_ref(family, table)} {identifier(set_name, 'set name')} {anonymous_set(items)}"
    )


# --- matches ------------------------------------------------------------------


def _ifname(name: str) -> str:
    if len(name.encode()) > IFNAME_MAX:
        raise NftTextError(f"interface name {name!r} is longer than {IFNAME_MAX} bytes (Linux limit)")
    return quoted(name, "interface name")


def _negated(negate: bool) -> str:
    return "!= " if negate else ""


def iifname(name: str, *, negate: bool = False) -> str:
    """``iifname "name"`` (``!=`` with ``negate``)."""
    return f"iifname {_negated(negate)}{_ifname(name)}"


def oifname(name: str, *, negate: bool = False) -> str:
    """``oifname "name"`` (``!=`` with ``negate``)."""
    return f"oifname {_negated(negate)}{_ifname(name)}"


def iifname_in(names: Iterable[str]) -> str:
    """``iifname { "a", "b" }``."""
    return f"iifname {anonymous_set(_ifname(n) for n in names)}"


def address(family: str, field: str, value: str, *, negate: bool = False) -> str:
    """``ip saddr VALUE`` / ``ip6 daddr != VALUE``; VALUE an address, network,
    range, :func:`set_ref` or :func:`anonymous_set`."""
    _keyword(family, frozenset({"ip", "ip6"}), "address family")
    _keyword(field, frozenset({"saddr", "daddr"}), "address field")
    return f"{family} {field} {_negated(negate)}{value}"


META_L4PROTO = "meta l4proto"


def l4proto(proto: str) -> str:
    """``meta l4proto P``."""
    return f"{META_L4PROTO} {proto}"


def port_range(first: int, last: int) -> str:
    """``80`` or ``5000-6000``."""
    return str(first) if first == last else f"{first}-{last}"


def port(proto: str, field: str, ports: str | int) -> str:
    """``tcp dport 443`` / ``udp sport 51820-53000`` (``ports`` may be a :func:`port_range`)."""
    _keyword(proto, frozenset({"tcp", "udp"}), "port protocol")
    _keyword(field, frozenset({"sport", "dport"}), "port field")
    return f"{proto} {field} {ports}"


def icmp_type(family: str, types: Sequence[str]) -> str:
    """``icmp type echo-request`` / ``icmpv6 type { a, b }``."""
    _keyword(family, frozenset({"icmp", "icmpv6"}), "ICMP family")
    return f"{family} type {one_or_set(types)}"
