"""``zerogate segment directory init`` against OpenLDAP: plan, then apply.

:func:`plan_setup` reads the directory (as the directory admin, and as the
``cn=config`` admin when given) and lists what is missing: the service
account, the monitored and protected groups (:mod:`directory_render` has their
shape), and the ACL that lets only the service account change the protected
group's ``member``. Nothing is written while planning, so a wrong password, a
missing parent entry or an unreachable ``cn=config`` stops the run before any
change. :func:`apply_setup` then makes the missing parts, in that order; a
second run finds everything present and changes nothing.

The ACL is an ``olcAccess`` value of the database holding the base DN, added
as ``{0}`` so it comes before the existing rules (slapd uses the first rule that
matches). Without the ``cn=config`` admin it cannot be set online: the plan
marks it ``manual`` and carries the LDIF for the admin.

The service account's password is random, written to a new 0600 file (created
exclusively, before the account, and removed again if the account cannot be
made) and stored in the directory as ``{SSHA}``, what ``slappasswd`` makes.

Connections, escaping and error translation are those of
:class:`zerogate.netops.ldap.Directory` (errors: its ``DirectoryError`` tree);
this module subclasses it only to add entries and read/extend ``cn=config``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from ldap3.utils.conv import escape_filter_chars

from zerogate.netops.ldap import Directory, DirectoryBadConfig, DirectoryConfig
from zerogate.segment.directory_render import (
    MONITORED_DESCRIPTION,
    PROTECTED_DESCRIPTION,
    SetupSpec,
    acl_rule,
    group_attrs,
    ldif_entry,
    normalize_acl,
    render_acl_ldif,
    service_attrs,
)

__all__ = ["Credentials", "Plan", "Step", "apply_setup", "plan_setup"]

log = logging.getLogger(__name__)

_NO_SUCH_OBJECT = 32
_ENTRY_EXISTS = 68
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Credentials:
    """A bind DN and its password (never repr'd)."""

    dn: str
    password: str = field(repr=False)


@dataclass
class Step:
    """One thing init makes: ``state`` is ``present``, ``missing`` (to create),
    ``manual`` (an admin must apply ``ldif``) or, after apply, ``created``."""

    kind: str  # service-account | monitored-group | protected-group | acl
    dn: str
    state: str
    ldif: str = ""


@dataclass
class Plan:
    spec: SetupSpec
    steps: list[Step]
    database_dn: str | None = None  # the cn=config database entry (None: not known)

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.state in ("missing", "manual")]


def ssha(password: str) -> str:
    """``{SSHA}`` of ``password``: salted SHA-1, slapd's default scheme."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


class _Admin(Directory):
    """The adapter's connection and errors, plus the few writes only setup needs."""

    def __init__(self, url: str, creds: Credentials, spec: SetupSpec, ca_file: Path | None) -> None:
        super().__init__(
            DirectoryConfig(
                url=url, bind_dn=creds.dn, password=creds.password, base_dn=spec.base_dn,
                monitored_group_dn=spec.monitored_group_dn, protected_group_dn=spec.protected_group_dn,
                ca_file=ca_file,
            )
        )  # fmt: skip

    def object_classes(self, dn: str) -> set[str] | None:
        """The entry's objectClasses (lower case), or None when it does not exist."""
        with self._session() as conn:
            ok = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectClass"])
            code = conn.result["result"]
            if not ok and code == _NO_SUCH_OBJECT:
                return None
            if not ok and code != 0:
                self._raise(conn, f"read {dn}", "DN")
            entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
            if not entries:
                return None
            return {str(c).lower() for c in entries[0]["attributes"].get("objectClass", [])}

    def add(self, dn: str, attrs: dict[str, list[str]]) -> bool:
        """Add an entry; False if it exists already (made meanwhile by someone else)."""
        with self._session() as conn:
            if conn.add(dn, attributes=attrs):  # type: ignore[no-untyped-call]  # untyped in types-ldap3
                return True
            if conn.result["result"] == _ENTRY_EXISTS:
                return False
            self._raise(conn, f"add {dn}", "DN and that its parent entry exists")

    def database_of(self, suffix: str) -> tuple[str, list[str]]:
        """The cn=config entry of the database holding ``suffix``, and its olcAccess values."""
        query = f"(olcSuffix={escape_filter_chars(suffix)})"
        with self._session() as conn:
            ok = conn.search("cn=config", query, ldap3.LEVEL, attributes=["olcAccess"])
            if not ok and conn.result["result"] != 0:
                self._raise(conn, "search cn=config", "config bind DN")
            entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
            if len(entries) != 1:
                raise DirectoryBadConfig(
                    f"cn=config holds {len(entries)} databases with suffix {suffix}; "
                    "check the base DN (it must be a database suffix) and the config bind DN"
                )
            values = entries[0]["attributes"].get("olcAccess", [])
            return str(entries[0]["dn"]), [str(v) for v in values]

    def add_first_rule(self, database_dn: str, rule: str) -> None:
        """Add ``rule`` as olcAccess ``{0}``: before every existing rule."""
        with self._session() as conn:
            changes: dict[str, Any] = {"olcAccess": [(ldap3.MODIFY_ADD, ["{0}" + rule])]}
            if not conn.modify(database_dn, changes):  # type: ignore[no-untyped-call]
                self._raise(conn, f"add the ACL to {database_dn}", "config bind DN")


def _entry_step(admin: _Admin, kind: str, dn: str, attrs: dict[str, list[str]], group: bool) -> Step:
    classes = admin.object_classes(dn)
    if classes is None:
        # Checked now so that a missing parent stops the run before the first write.
        if admin.object_classes(SetupSpec.parent(dn)) is None:
            raise DirectoryBadConfig(
                f"the parent of {dn} does not exist; create it first or choose another DN"
            )
        return Step(kind, dn, "missing", ldif_entry(dn, attrs))
    if group and "groupofnames" not in classes:
        raise DirectoryBadConfig(f"{dn} exists but is not a groupOfNames; choose another group DN")
    return Step(kind, dn, "present")


def plan_setup(
    url: str,
    admin: Credentials,
    spec: SetupSpec,
    config_admin: Credentials | None = None,
    ca_file: Path | None = None,
) -> Plan:
    """What is missing in the directory (reads only; raises ``DirectoryError`` on failure)."""
    directory = _Admin(url, admin, spec, ca_file)
    if directory.object_classes(spec.base_dn) is None:
        raise DirectoryBadConfig(
            f"the base DN {spec.base_dn} does not exist (or is not visible to {admin.dn})"
        )
    steps = [
        _entry_step(directory, "service-account", spec.service_dn, service_attrs(spec, "{SSHA}..."), False),
        _entry_step(
            directory, "monitored-group", spec.monitored_group_dn,
            group_attrs(spec.monitored_group_dn, MONITORED_DESCRIPTION), True,
        ),
        _entry_step(
            directory, "protected-group", spec.protected_group_dn,
            group_attrs(spec.protected_group_dn, PROTECTED_DESCRIPTION), True,
        ),
    ]  # fmt: skip
    if config_admin is None:
        steps.append(Step("acl", "cn=config", "manual", render_acl_ldif(spec)))
        return Plan(spec, steps)
    config = _Admin(url, config_admin, spec, ca_file)
    database_dn, rules = config.database_of(spec.base_dn)
    wanted = normalize_acl(acl_rule(spec))
    if any(normalize_acl(rule) == wanted for rule in rules):
        steps.append(Step("acl", database_dn, "present"))
    else:
        steps.append(Step("acl", database_dn, "missing", render_acl_ldif(spec, database_dn)))
    return Plan(spec, steps, database_dn)


def _write_new_secret(path: Path, secret: str) -> None:
    """Create ``path`` 0600 (never over an existing file) holding ``secret`` (no newline)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret)


def apply_setup(
    plan: Plan,
    url: str,
    admin: Credentials,
    password_file: Path,
    config_admin: Credentials | None = None,
    ca_file: Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> str | None:
    """Make what ``plan`` found missing; returns the new service password (None: account existed).

    ``password_file`` must not exist when the account is to be made: the password
    goes there first, so it is never lost, and the file is removed if the add fails.
    """
    spec = plan.spec
    directory = _Admin(url, admin, spec, ca_file)
    password = None
    for step in plan.steps:
        if step.state == "present":
            progress(f"{step.kind} {step.dn}: present, unchanged")
            continue
        if step.state == "manual":
            progress(
                f"{step.kind}: not set (no --config-bind-dn); apply the LDIF below as the cn=config admin"
            )
            continue
        if step.kind == "service-account":
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            _write_new_secret(password_file, password)
            try:
                made = directory.add(step.dn, service_attrs(spec, ssha(password)))
            except BaseException:
                password_file.unlink(missing_ok=True)
                raise
            if not made:
                password_file.unlink(missing_ok=True)
                password = None
        elif step.kind == "acl":
            assert config_admin is not None and plan.database_dn is not None
            _Admin(url, config_admin, spec, ca_file).add_first_rule(plan.database_dn, acl_rule(spec))
            made = True
        else:
            desc = MONITORED_DESCRIPTION if step.kind == "monitored-group" else PROTECTED_DESCRIPTION
            made = directory.add(step.dn, group_attrs(step.dn, desc))
        step.state = "created" if made else "present"
        progress(f"{step.kind} {step.dn}: {'created' if made else 'present (made meanwhile), unchanged'}")
        log.info("directory init: %s %s %s", step.kind, step.dn, step.state, extra={"component": "directory"})
    return password
