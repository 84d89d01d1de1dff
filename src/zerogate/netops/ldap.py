"""The directory adapter (ldap3): which computers the segment server monitors, and
the "protected" group it maintains.

The customer fills a *monitored* group whose members are computer entries;
:meth:`Directory.read_monitored` reads them. The product writes a *protected*
group: :meth:`Directory.add_protected` when a computer becomes protected,
:meth:`Directory.remove_protected` when it is unprotected (both idempotent).
:class:`DirectorySync` polls the monitored group and reports changes, using the
pure :func:`diff_membership`.

A computer entry is one with objectClass ``device``, ``ipHost`` (RFC 2307) or
``computer`` (Active Directory). Its name is ``dNSHostName`` when present (the
AD shape), otherwise ``cn``; its address is the first valid ``ipHostNumber``.
A member that does not exist, cannot be read or is not a computer is skipped and
counted, never fatal. A groupOfNames must keep one member; a group listing
itself (the placeholder :mod:`zerogate.testbed.slapd` uses) is ignored.

Every operation opens its own connection (simple bind, ``ldap://`` or
``ldaps://`` with certificate validation) and closes it; the password is never
logged, repr'd or put into an error. Values put into filters are escaped
(:func:`ldap3.utils.conv.escape_filter_chars`), DNs are parsed and rebuilt, so
a computer named ``a*)(cn=*`` matches only itself.

Errors::

    DirectoryError              any other failure (message: operation, LDAP result)
      DirectoryUnreachable      no connection, TLS failure, timeout, server busy/unavailable
      DirectoryAuthFailed       the bind DN / password was rejected
      DirectoryRefused          the account may not do this (insufficientAccessRights),
                                or the directory refused the change (schema)
      DirectoryBadConfig        invalid settings, or a configured DN does not exist
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

__all__ = [
    "DEFAULT_MAX_MEMBERS",
    "Computer",
    "Directory",
    "DirectoryAuthFailed",
    "DirectoryBadConfig",
    "DirectoryConfig",
    "DirectoryError",
    "DirectoryRefused",
    "DirectoryUnreachable",
    "MonitoredRead",
    "dn_key",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMBERS = 20_000
COMPUTER_CLASSES = frozenset({"device", "iphost", "computer"})
COMPUTER_FILTER = "(|(objectClass=device)(objectClass=ipHost)(objectClass=computer))"
_COMPUTER_ATTRS = ["objectClass", "cn", "ipHostNumber", "dNSHostName"]

# LDAP result codes (RFC 4511) this adapter distinguishes.
_NO_SUCH_ATTRIBUTE = 16
_VALUE_EXISTS = 20
_NO_SUCH_OBJECT = 32
_INVALID_DN_SYNTAX = 34
_INAPPROPRIATE_AUTH = 48
_INVALID_CREDENTIALS = 49
_INSUFFICIENT_ACCESS = 50
_BUSY = 51
_UNAVAILABLE = 52
_UNWILLING = 53
_OBJECT_CLASS_VIOLATION = 65


class DirectoryError(RuntimeError):
    """A directory operation failed; the message says which and what to check."""


class DirectoryUnreachable(DirectoryError):
    """The directory could not be reached or did not answer in time."""


class DirectoryAuthFailed(DirectoryError):
    """The directory rejected the bind DN or password."""


class DirectoryRefused(DirectoryError):
    """The directory refused the operation (access rights or schema)."""


class DirectoryBadConfig(DirectoryError):
    """The directory settings are invalid, or name an entry that does not exist."""


def _parse_dn(dn: str, what: str) -> list[tuple[str, str]]:
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (ldap_exc.LDAPInvalidDnError, IndexError, ValueError) as exc:
        raise DirectoryBadConfig(f"{what} {dn!r} is not a valid DN ({exc})") from None
    if not parts:
        raise DirectoryBadConfig(f"{what} is empty; give a DN such as 'cn=x,dc=example,dc=com'")
    return [(attr, value) for attr, value, _sep in parts]


def _unescape(value: str) -> str:
    """An RDN value without its DN escapes (``\\,`` and ``\\2C`` both become ``,``)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(ch in string.hexdigits for ch in pair):
                out.append(int(pair, 16))
                i += 3
            else:
                out += value[i + 1].encode()
                i += 2
            continue
        out += value[i].encode()
        i += 1
    return out.decode(errors="replace")


def dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    """A comparison key for ``dn``: attribute types and values case-folded, escapes undone.

    Good enough for the case-insensitive naming attributes (cn, ou, dc) that
    computer and group DNs use; raises :class:`DirectoryBadConfig` if ``dn`` is
    not a DN.
    """
    return tuple((attr.lower(), _unescape(value).casefold()) for attr, value in _parse_dn(dn, "DN"))


def _canonical_dn(dn: str) -> str:
    """``dn`` with insignificant spaces removed (escapes kept), safe to send as a search base."""
    return ",".join(f"{attr}={value}" for attr, value in _parse_dn(dn, "DN"))


@dataclass(frozen=True)
class DirectoryConfig:
    """Where the directory is and which groups to use; validated on creation.

    ``ca_file``: PEM bundle to verify an ``ldaps://`` server (None: the system
    trust store). Timeouts are in seconds. ``max_members``: at most this many
    members of the monitored group are read (the rest is reported as truncated).
    """

    url: str
    bind_dn: str
    password: str = field(repr=False)
    base_dn: str
    monitored_group_dn: str
    protected_group_dn: str
    ca_file: Path | None = None
    connect_timeout: float = 5.0
    operation_timeout: float = 15.0
    max_members: int = DEFAULT_MAX_MEMBERS
    member_attribute: str = "member"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldap", "ldaps"):
            raise DirectoryBadConfig(f"directory URL {self.url!r} must start with ldap:// or ldaps://")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise DirectoryBadConfig(f"directory URL {self.url!r} has an invalid port") from None
        if not parts.hostname:
            raise DirectoryBadConfig(f"directory URL {self.url!r} names no host")
        if parts.path not in ("", "/") or parts.query:
            raise DirectoryBadConfig(f"directory URL {self.url!r}: give only scheme, host and port")
        if self.ca_file is not None:
            if parts.scheme != "ldaps":
                raise DirectoryBadConfig(
                    "a CA file is only used with ldaps://; change the URL or drop the CA file"
                )
            if not Path(self.ca_file).is_file():
                raise DirectoryBadConfig(f"CA file {self.ca_file} does not exist")
        if not self.password:
            # An empty password makes a simple bind anonymous: refuse it here.
            raise DirectoryBadConfig("the directory password is empty; set the bind account's password")
        for what, dn in (
            ("bind DN", self.bind_dn),
            ("base DN", self.base_dn),
            ("monitored group DN", self.monitored_group_dn),
            ("protected group DN", self.protected_group_dn),
        ):
            _parse_dn(dn, what)
        if self.connect_timeout <= 0 or self.operation_timeout <= 0:
            raise DirectoryBadConfig("directory timeouts must be positive numbers of seconds")
        if self.max_members < 1:
            raise DirectoryBadConfig("max_members must be at least 1")
        if not self.member_attribute.replace("-", "").isalnum():
            raise DirectoryBadConfig(f"member attribute {self.member_attribute!r} is not an attribute name")

    @property
    def use_tls(self) -> bool:
        return urlsplit(self.url).scheme == "ldaps"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (636 if self.use_tls else 389)


@dataclass(frozen=True)
class Computer:
    """A monitored computer: its entry's DN, the name to reach it by, its address if recorded."""

    dn: str
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class MonitoredRead:
    """One read of the monitored group: the computers, and what was left out."""

    computers: tuple[Computer, ...]
    members: int  # member values the group holds (placeholder excluded)
    skipped: tuple[str, ...] = ()  # member DNs that are missing, unreadable or not computers
    truncated: bool = False  # the group had more than max_members members


def _first(attrs: dict[str, Any], name: str) -> str | None:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            if isinstance(values, list | tuple):
                return str(values[0]) if values else None
            return str(values) if values not in (None, "") else None
    return None


def _values(attrs: dict[str, Any], name: str) -> list[str]:
    for key, values in attrs.items():
        if key.lower() == name.lower():
            return [str(v) for v in values] if isinstance(values, list | tuple) else [str(values)]
    return []


def computer_from_entry(dn: str, attrs: dict[str, Any]) -> Computer | None:
    """The :class:`Computer` an entry describes, or None if it is not a computer."""
    classes = {c.lower() for c in _values(attrs, "objectClass")}
    if not classes & COMPUTER_CLASSES:
        return None
    name = _first(attrs, "dNSHostName") or _first(attrs, "cn")
    if not name:
        return None
    address = None
    for raw in _values(attrs, "ipHostNumber"):
        try:
            address = ipaddress.ip_address(raw.strip())
            break
        except ValueError:
            log.warning(
                "computer %s: ignoring invalid ipHostNumber %r", dn, raw, extra={"component": "directory"}
            )
    return Computer(dn=dn, name=name, address=address)


def _sort_key(c: Computer) -> tuple[str, str]:
    return c.name.casefold(), c.dn


class Directory:
    """Reads the monitored group and maintains the protected group of one directory."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"Directory(url={self.config.url!r}, bind_dn={self.config.bind_dn!r})"

    # -- reads ---------------------------------------------------------------

    def monitored_computers(self) -> tuple[Computer, ...]:
        """The computers in the monitored group, sorted by name (see :meth:`read_monitored`)."""
        return self.read_monitored().computers

    def read_monitored(self) -> MonitoredRead:
        """Read the monitored group's members and resolve each to a computer entry."""
        cfg = self.config
        with self._session() as conn:
            members = self._members(conn, cfg.monitored_group_dn, "monitored group")
            truncated = len(members) > cfg.max_members
            if truncated:
                log.warning(
                    "monitored group %s has %d members; reading only the first %d (raise max_members)",
                    cfg.monitored_group_dn, len(members), cfg.max_members,
                    extra={"component": "directory"},
                )  # fmt: skip
            computers: list[Computer] = []
            skipped: list[str] = []
            for member in members[: cfg.max_members]:
                computer = self._read_computer(conn, member)
                if computer is None:
                    skipped.append(member)
                else:
                    computers.append(computer)
        if skipped:
            log.info(
                "monitored group %s: %d member(s) skipped (missing, unreadable or not a computer), e.g. %s",
                cfg.monitored_group_dn, len(skipped), skipped[0], extra={"component": "directory"},
            )  # fmt: skip
        computers.sort(key=_sort_key)
        return MonitoredRead(tuple(computers), len(members), tuple(skipped), truncated)

    def protected_members(self) -> tuple[str, ...]:
        """The member DNs of the protected group, sorted (the group's own DN excluded)."""
        with self._session() as conn:
            return tuple(sorted(self._members(conn, self.config.protected_group_dn, "protected group")))

    def find_computers(self, name: str) -> tuple[Computer, ...]:
        """Computers under the base DN whose cn or dNSHostName is exactly ``name``."""
        value = escape_filter_chars(name)
        query = f"(&{COMPUTER_FILTER}(|(cn={value})(dNSHostName={value})))"
        with self._session() as conn:
            ok = conn.search(
                _canonical_dn(self.config.base_dn), query, ldap3.SUBTREE,
                attributes=_COMPUTER_ATTRS, size_limit=self.config.max_members,
            )  # fmt: skip
            if not ok and conn.result["result"] != 0:
                self._raise(conn, f"search for computer {name!r} under {self.config.base_dn}", "base DN")
            found = (computer_from_entry(e["dn"], dict(e["attributes"])) for e in _entries(conn))
            return tuple(sorted((c for c in found if c is not None), key=_sort_key))

    # -- writes --------------------------------------------------------------

    def add_protected(self, dn: str) -> bool:
        """Add ``dn`` to the protected group; True if added, False if it was already a member."""
        return self._change_protected(dn, ldap3.MODIFY_ADD)

    def remove_protected(self, dn: str) -> bool:
        """Remove ``dn`` from the protected group; True if removed, False if it was not a member."""
        return self._change_protected(dn, ldap3.MODIFY_DELETE)

    def _change_protected(self, dn: str, op: str) -> bool:
        cfg = self.config
        member = _canonical_dn(dn)
        if op == ldap3.MODIFY_ADD:
            action = f"add {member} to {cfg.protected_group_dn}"
        else:
            action = f"remove {member} from {cfg.protected_group_dn}"
        with self._session() as conn:
            group = _canonical_dn(cfg.protected_group_dn)
            changes = {cfg.member_attribute: [(op, [member])]}
            if conn.modify(group, changes):  # type: ignore[no-untyped-call]  # untyped in types-ldap3
                log.info("protected group: %s", action, extra={"component": "directory"})
                return True
            code = conn.result["result"]
            if code == (_VALUE_EXISTS if op == ldap3.MODIFY_ADD else _NO_SUCH_ATTRIBUTE):
                return False
            if code == _OBJECT_CLASS_VIOLATION and op == ldap3.MODIFY_DELETE:
                raise DirectoryRefused(
                    f"cannot {action}: it is the group's last member and the group's schema needs one; "
                    "add a placeholder member to the group (e.g. the group's own DN)"
                )
            self._raise(conn, action, "protected group DN")

    # -- internals -------------------------------------------------------------

    def _members(self, conn: ldap3.Connection, group_dn: str, what: str) -> list[str]:
        attr = self.config.member_attribute
        ok = conn.search(_canonical_dn(group_dn), "(objectClass=*)", ldap3.BASE, attributes=[attr])
        if not ok and conn.result["result"] != 0:
            self._raise(conn, f"read the {what} {group_dn}", f"{what} DN")
        entries = _entries(conn)
        if not entries:
            raise DirectoryBadConfig(f"the {what} {group_dn} is not visible to {self.config.bind_dn}")
        own = dn_key(group_dn)
        members = []
        for value in _values(dict(entries[0]["attributes"]), attr):
            try:
                if dn_key(value) == own:
                    continue  # placeholder: a groupOfNames must have a member
            except DirectoryBadConfig:
                pass  # not a DN: kept, and skipped when resolved
            members.append(value)
        return members

    def _read_computer(self, conn: ldap3.Connection, member: str) -> Computer | None:
        try:
            base = _canonical_dn(member)
        except DirectoryBadConfig:
            return None
        ok = conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=_COMPUTER_ATTRS)
        code = conn.result["result"]
        if not ok and code not in (0, _NO_SUCH_OBJECT, _INVALID_DN_SYNTAX, _INSUFFICIENT_ACCESS):
            self._raise(conn, f"read member {member}", "monitored group DN")
        entries = _entries(conn)
        return computer_from_entry(entries[0]["dn"], dict(entries[0]["attributes"])) if entries else None

    def _raise(self, conn: ldap3.Connection, action: str, setting: str) -> NoReturn:
        result = conn.result or {}
        code = result.get("result")
        detail = f"{result.get('description', 'error')} ({code})"
        if result.get("message"):
            detail += f": {result['message']}"
        if code == _INSUFFICIENT_ACCESS:
            raise DirectoryRefused(
                f"cannot {action}: {detail}; grant {self.config.bind_dn} the right in the directory's ACL"
            )
        if code in (_NO_SUCH_OBJECT, _INVALID_DN_SYNTAX):
            raise DirectoryBadConfig(f"cannot {action}: {detail}; check the {setting}")
        if code in (_BUSY, _UNAVAILABLE):
            raise DirectoryUnreachable(f"cannot {action}: the directory is {detail}; retry later")
        if code == _OBJECT_CLASS_VIOLATION:
            raise DirectoryRefused(f"cannot {action}: {detail}")
        raise DirectoryError(f"cannot {action}: {detail}")

    def _server(self) -> ldap3.Server:
        cfg = self.config
        tls = None
        if cfg.use_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(cfg.ca_file) if cfg.ca_file is not None else None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        # A fresh Server per session: ldap3 shuns an address that failed once.
        return ldap3.Server(
            cfg.host, port=cfg.port, use_ssl=cfg.use_tls, tls=tls,
            connect_timeout=cfg.connect_timeout, get_info=ldap3.NONE,
        )  # fmt: skip

    @contextmanager
    def _session(self) -> Iterator[ldap3.Connection]:
        cfg = self.config
        where = f"{cfg.url} as {cfg.bind_dn}"
        conn = ldap3.Connection(
            self._server(), user=cfg.bind_dn, password=cfg.password, authentication=ldap3.SIMPLE,
            # receive_timeout: ldap3 packs it into a socket option as an int.
            receive_timeout=math.ceil(cfg.operation_timeout), raise_exceptions=False,
            auto_referrals=False, check_names=False,
        )  # fmt: skip
        try:
            try:
                bound = conn.bind()
            except ldap_exc.LDAPException as exc:
                raise DirectoryUnreachable(
                    f"cannot reach the directory at {cfg.url}: {_exc_text(exc)}; check that the server "
                    f"runs, that {cfg.host} port {cfg.port} is reachable from here"
                    + (" and that its certificate is trusted (CA file)" if cfg.use_tls else "")
                ) from None
            if not bound:
                code = conn.result.get("result") if conn.result else None
                if code in (_INVALID_CREDENTIALS, _INAPPROPRIATE_AUTH, _UNWILLING):
                    raise DirectoryAuthFailed(
                        f"the directory at {cfg.url} rejected the bind as {cfg.bind_dn} "
                        f"({conn.result.get('description')}); check the bind DN and password"
                    )
                self._raise(conn, f"bind to {where}", "bind DN")
            yield conn
        except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPResponseTimeoutError) as exc:
            raise DirectoryUnreachable(
                f"the directory at {cfg.url} stopped answering ({_exc_text(exc)}); "
                f"the operation timeout is {cfg.operation_timeout:g} s"
            ) from None
        except ldap_exc.LDAPException as exc:
            raise DirectoryError(f"directory operation on {cfg.url} failed: {_exc_text(exc)}") from None
        finally:
            try:
                conn.unbind()
            except ldap_exc.LDAPException:
                pass


def _entries(conn: ldap3.Connection) -> list[dict[str, Any]]:
    return [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]


def _exc_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
