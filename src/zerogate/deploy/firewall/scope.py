"""Which tables an nftables file touches, and the script that puts them back (pure).

The commit-confirm engine snapshots exactly these tables before an apply, so a
rollback restores them and leaves every other table alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from zerogate.deploy.firewall.errors import RulesetError

FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
_VERBS = frozenset({"add", "create", "insert", "replace", "delete", "destroy", "flush"})
_OBJECTS = frozenset(
    {"table", "chain", "rule", "set", "map", "element", "flowtable", "counter", "quota", "limit",
     "synproxy", "secmark", "ct"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


@dataclass(frozen=True, order=True)
class TableRef:
    family: str
    name: str

    def __str__(self) -> str:
        return f"{self.family} {self.name}"

    @classmethod
    def parse(cls, text: str) -> TableRef:
        family, _, name = text.partition(" ")
        return cls(family, name)


@dataclass(frozen=True)
class RulesetScope:
    """What a ruleset file changes: named tables, or everything (``flush ruleset``)."""

    tables: tuple[TableRef, ...]
    whole_ruleset: bool = False

    def describe(self) -> str:
        return "the whole ruleset" if self.whole_ruleset else ", ".join(f"table {t}" for t in self.tables)


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    """nft tokens with their line: words, quoted strings, ``{ } ;`` and newlines; comments dropped."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and text[i + 1 : i + 2] == "\n":
            i, line = i + 2, line + 1
            continue
        if c == "\n":
            yield "\n", line
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise RulesetError(f"line {line}: unterminated string")
            yield text[i : end + 1], line
            line += text.count("\n", i, end)
            i = end
        elif c in "{};":
            yield c, line
        elif not c.isspace():
            j = i
            while j < n and not text[j].isspace() and text[j] not in '{};#"':
                j += 1
            yield text[i:j], line
            i = j
            continue
        i += 1


def _statements(text: str) -> Iterator[tuple[list[str], int]]:
    """Top-level statements (a ``table x { ... }`` block counts as one) with their first line."""
    current: list[str] = []
    start, depth = 0, 0
    for tok, line in _tokens(text):
        if depth == 0 and tok in ("\n", ";"):
            if current:
                yield current, start
            current = []
            continue
        if tok == "\n":
            continue
        if not current:
            start = line
        current.append(tok)
        depth += {"{": 1, "}": -1}.get(tok, 0)
        if depth < 0:
            raise RulesetError(f"line {line}: '}}' without a matching '{{'")
    if current:
        yield current, start


def _table_ref(tokens: Sequence[str], at: int, line: int) -> TableRef:
    words = [t for t in tokens[at : at + 2] if t not in "{};"]
    family = "ip"
    if len(words) == 2 and words[0] in FAMILIES:
        family, words = words[0], words[1:]
    name = words[0].strip('"') if words else ""
    if name.startswith("$"):
        raise RulesetError(f"line {line}: table name from a variable ({name}) is not supported; write it out")
    if not _NAME.match(name):
        raise RulesetError(f"line {line}: cannot tell which table this statement changes")
    return TableRef(family, name)


def nft_scope(text: str) -> RulesetScope:
    """The tables an nftables file creates, changes or deletes (pure; no nft needed)."""
    found: dict[TableRef, None] = {}
    whole = False
    for toks, line in _statements(text):
        verb = toks[0]
        if verb in ("define", "redefine", "undefine"):
            continue
        if verb == "include":
            raise RulesetError(f"line {line}: 'include' is not supported; apply one self-contained file")
        if verb == "table":
            found[_table_ref(toks, 1, line)] = None
            continue
        if verb not in _VERBS or len(toks) < 2:
            raise RulesetError(
                f"line {line}: '{' '.join(toks[:3])}' is not a ruleset statement nft -f applies"
            )
        if verb == "flush" and toks[1] == "ruleset":
            whole = True
            continue
        if toks[1] not in _OBJECTS:
            raise RulesetError(f"line {line}: unknown object '{toks[1]}' after '{verb}'")
        at = 3 if toks[1] == "ct" else 2
        found[_table_ref(toks, at, line)] = None
    if not found and not whole:
        raise RulesetError("the file defines no table: nothing to apply")
    return RulesetScope(tuple(found), whole)


def parse_nft_tables(listing: str) -> set[TableRef]:
    """Tables from ``nft list tables`` output (``table inet zerogate`` per line)."""
    refs = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            refs.add(TableRef(parts[1], parts[2]))
    return refs


def render_nft_restore(scope: RulesetScope, listings: Mapping[TableRef, str | None], header: str = "") -> str:
    """A script for ``nft -f`` that puts the scope back as listed (``None``: the table did not exist).

    For a whole-ruleset scope pass one listing under any key: the ``nft list ruleset`` output.
    """
    lines = [f"# {h}" for h in header.splitlines()]
    if scope.whole_ruleset:
        lines.append("flush ruleset")
        lines.extend(v.rstrip("\n") for v in listings.values() if v)
    else:
        for ref in scope.tables:
            lines.append(f"table {ref} {{}}")  # create-if-missing so the delete always works
            lines.append(f"delete table {ref}")
            if (body := listings.get(ref)) is not None:
                lines.append(body.rstrip("\n"))
    return "\n".join(lines) + "\n"
