"""Entries for the test slapd as LDIF: computers and groups with escaped DNs.

Split out of :mod:`zerogate.testbed.slapd` (which re-exports everything here) so
that module stays readable; nothing here talks to a server.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence

from ldap3.utils.dn import escape_rdn

__all__ = ["Entry", "computer_entry", "group_entry", "render_ldif"]

Entry = tuple[str, Mapping[str, Sequence[str]]]


def _ldif_value(attr: str, value: str) -> str:
    # Values that LDIF cannot carry verbatim (leading space/colon/<, non-ASCII,
    # trailing space) go base64-encoded.
    unsafe = not value.isascii() or value[:1] in (" ", ":", "<") or value.endswith(" ") or "\n" in value
    if unsafe:
        return f"{attr}:: {base64.b64encode(value.encode()).decode()}"
    return f"{attr}: {value}"


def render_ldif(entries: Iterable[Entry]) -> str:
    """LDIF text for entries ``(dn, {attribute: [values]})`` (for slapadd / ldapadd)."""
    blocks = []
    for dn, attrs in entries:
        lines = [_ldif_value("dn", dn)]
        for attr, values in attrs.items():
            lines.extend(_ldif_value(attr, v) for v in values)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def computer_entry(
    name: str, parent: str, *, address: str | None = None, dns_host_name: str | None = None
) -> Entry:
    """A computer entry ``cn=NAME,PARENT`` (``NAME`` escaped): device + ipHost, or the AD shape."""
    classes = ["device"]
    attrs: dict[str, list[str]] = {"cn": [name]}
    if address is not None:
        classes.append("ipHost")
        attrs["ipHostNumber"] = [address]
    if dns_host_name is not None:
        classes.append("computer")
        attrs["dNSHostName"] = [dns_host_name]
    return f"cn={escape_rdn(name)},{parent}", {"objectClass": classes, **attrs}


def group_entry(name: str, parent: str, members: Sequence[str] = ()) -> Entry:
    """A groupOfNames ``cn=NAME,PARENT``; with no members it lists itself (groupOfNames needs one)."""
    dn = f"cn={escape_rdn(name)},{parent}"
    return dn, {"objectClass": ["groupOfNames"], "cn": [name], "member": list(members) or [dn]}
