"""What ``zerogate segment directory init`` puts into a directory, as pure text.

:class:`SetupSpec` holds the validated names (service account, the monitored
and protected groups, the base DN); the renderers turn it into the OpenLDAP LDIF
(:func:`render_ldif`), the Active Directory PowerShell script
(:func:`render_powershell`) and the segment server's ``directory_*`` settings
(:func:`render_settings`). :mod:`zerogate.segment.directory_setup` applies the
same entries and ACL over LDAP.

Every name is checked with ``re.fullmatch`` before it goes anywhere: DNs may not
hold control characters or double quotes (they are quoted in an ACL), must parse
as DNs and lie under the base DN; errors never quote the rejected value. In the
PowerShell script values only ever appear in single-quoted strings with single
quotes doubled.

Errors: :class:`SetupInputError` (a ``ValueError``) for any invalid input.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from zerogate.netops.ldap import DirectoryBadConfig, dn_key
from zerogate.segment.directory_ad import POWERSHELL_TEMPLATE

__all__ = [
    "DEFAULT_DATABASE_DN",
    "DEFAULT_SERVICE_NAME",
    "LOCKED_PASSWORD",
    "SetupInputError",
    "SetupSpec",
    "acl_rule",
    "check_dn",
    "group_attrs",
    "ldif_entry",
    "normalize_acl",
    "render_acl_ldif",
    "render_ldif",
    "render_powershell",
    "render_settings",
    "service_attrs",
]

DEFAULT_SERVICE_NAME = "zerogate-segment"
# Where the mdb database of a default Debian/Ubuntu slapd lives in cn=config.
DEFAULT_DATABASE_DN = "olcDatabase={1}mdb,cn=config"
# A userPassword no password matches: the account cannot bind until one is set.
LOCKED_PASSWORD = "{CRYPT}*"  # noqa: S105 - a lock, not a secret

_DN = re.compile(r'[^\x00-\x1f\x7f-\x9f"$`]{3,512}')
# sAMAccountName allows 20 characters; the same name is the OpenLDAP cn.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}")
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"
# What a group name may be in the PowerShell script (an RDN value, unescaped).
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


class SetupInputError(ValueError):
    """A name or DN given to ``directory init`` is not acceptable; the message says which."""


def check_dn(dn: str, what: str) -> str:
    """``dn`` normalised, or :class:`SetupInputError` naming ``what`` (never quoting ``dn``)."""
    if not _DN.fullmatch(dn):
        raise SetupInputError(
            f"{what} is not acceptable: 3 to 512 characters, no control characters or double quotes"
        )
    try:
        dn_key(dn)
        parts = parse_dn(dn, escape=False, strip=True)
    except (DirectoryBadConfig, LDAPInvalidDnError, ValueError, IndexError):
        raise SetupInputError(f"{what} is not a valid DN (e.g. 'cn=name,dc=example,dc=com')") from None
    return ",".join(f"{attr}={value}" for attr, value, _sep in parts)


def _under(dn: str, base: str) -> bool:
    key, base_key = dn_key(dn), dn_key(base)
    return len(key) > len(base_key) and key[-len(base_key) :] == base_key


@dataclass(frozen=True)
class SetupSpec:
    """The validated names ``directory init`` works with; DNs normalised (no insignificant spaces)."""

    base_dn: str
    service_name: str = DEFAULT_SERVICE_NAME
    monitored_group_dn: str = ""  # "" -> cn=zerogate-monitored,BASE
    protected_group_dn: str = ""  # "" -> cn=zerogate-protected,BASE

    def __post_init__(self) -> None:
        base = check_dn(self.base_dn, "the base DN")
        object.__setattr__(self, "base_dn", base)
        if not _SERVICE_NAME.fullmatch(self.service_name):
            raise SetupInputError(
                "the service account name is not acceptable: 1 to 20 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        for field_name, what, default in (
            ("monitored_group_dn", "the monitored group DN", f"cn=zerogate-monitored,{base}"),
            ("protected_group_dn", "the protected group DN", f"cn=zerogate-protected,{base}"),
        ):
            dn = check_dn(getattr(self, field_name) or default, what)
            if not _under(dn, base):
                raise SetupInputError(f"{what} must lie under the base DN")
            if not _GROUP_NAME.fullmatch(self.rdn_value(dn)):
                raise SetupInputError(f"{what}: its first RDN value may hold only letters, digits, ' ._-'")
            object.__setattr__(self, field_name, dn)
        if dn_key(self.monitored_group_dn) == dn_key(self.protected_group_dn):
            raise SetupInputError("the monitored and the protected group must be different groups")

    @property
    def service_dn(self) -> str:
        return f"cn={self.service_name},{self.base_dn}"

    @staticmethod
    def rdn_value(dn: str) -> str:
        return str(parse_dn(dn, escape=False, strip=True)[0][1])

    @staticmethod
    def parent(dn: str) -> str:
        return ",".join(f"{a}={v}" for a, v, _s in parse_dn(dn, escape=False, strip=True)[1:])


# -- OpenLDAP ---------------------------------------------------------------


def service_attrs(spec: SetupSpec, password_hash: str) -> dict[str, list[str]]:
    """The service account: a bare simpleSecurityObject (no person, no mailbox, no shell)."""
    return {
        "objectClass": ["organizationalRole", "simpleSecurityObject"],
        "cn": [spec.service_name],
        "description": ["zerogate segment server: reads the monitored group, writes the protected group"],
        "userPassword": [password_hash],
    }


def group_attrs(dn: str, description: str) -> dict[str, list[str]]:
    """A groupOfNames listing itself: the schema needs a member, and the server ignores this one."""
    return {
        "objectClass": ["groupOfNames"],
        "cn": [SetupSpec.rdn_value(dn)],
        "description": [description],
        "member": [dn],
    }


MONITORED_DESCRIPTION = "zerogate: computers to monitor (filled by you)"
PROTECTED_DESCRIPTION = "zerogate: computers in enforcement (filled by the segment server only)"


def acl_rule(spec: SetupSpec) -> str:
    """The olcAccess rule: only the service account writes the protected group's members."""
    return (
        f'to dn.exact="{spec.protected_group_dn}" attrs=member '
        f'by dn.exact="{spec.service_dn}" write by users read by * none'
    )


def normalize_acl(rule: str) -> str:
    """An olcAccess value compared loosely: no ``{n}`` index, spaces collapsed, dn.base == dn.exact."""
    text = re.sub(r"^\{\d+\}", "", rule.strip())
    text = " ".join(text.split()).replace("dn.base=", "dn.exact=")
    return text.casefold()


def _ldif_line(attr: str, value: str) -> str:
    unsafe = not value.isascii() or value[:1] in (" ", ":", "<") or value.endswith(" ")
    if unsafe:
        return f"{attr}:: {base64.b64encode(value.encode()).decode()}"
    return f"{attr}: {value}"


def ldif_entry(dn: str, attrs: dict[str, list[str]]) -> str:
    """One ``changetype: add`` record."""
    lines = [_ldif_line("dn", dn), "changetype: add"]
    for attr, values in attrs.items():
        lines.extend(_ldif_line(attr, v) for v in values)
    return "\n".join(lines) + "\n"


def render_acl_ldif(spec: SetupSpec, database_dn: str = DEFAULT_DATABASE_DN) -> str:
    """The cn=config change: the rule added as ``{0}``, i.e. before every existing rule."""
    return (
        f"# Apply as the cn=config admin, e.g.: ldapmodify -Y EXTERNAL -H ldapi:/// -f THIS_FILE\n"
        f"# (the database of {spec.base_dn}: ldapsearch -Y EXTERNAL -H ldapi:/// -b cn=config "
        f"'(olcSuffix={spec.base_dn})' dn)\n"
        f"{_ldif_line('dn', database_dn)}\nchangetype: modify\nadd: olcAccess\n"
        f"{_ldif_line('olcAccess', '{0}' + acl_rule(spec))}\n"
    )


def render_ldif(spec: SetupSpec, database_dn: str = DEFAULT_DATABASE_DN) -> str:
    """Everything for OpenLDAP as LDIF: the account (locked), the two groups, the ACL."""
    return "\n".join(
        [
            "# zerogate segment directory setup for OpenLDAP (generated). Apply the three entries as the\n"
            "# directory admin (ldapmodify -x -H ldap://HOST -D ADMIN_DN -W -f THIS_FILE stops at the last\n"
            "# record, the ACL, which needs the cn=config admin: apply that record separately).\n"
            f"# The service account is locked until you set its password:\n"
            f'#   ldappasswd -x -H ldap://HOST -D ADMIN_DN -W -S "{spec.service_dn}"\n'
            + ldif_entry(spec.service_dn, service_attrs(spec, LOCKED_PASSWORD)),
            ldif_entry(spec.monitored_group_dn, group_attrs(spec.monitored_group_dn, MONITORED_DESCRIPTION)),
            ldif_entry(spec.protected_group_dn, group_attrs(spec.protected_group_dn, PROTECTED_DESCRIPTION)),
            render_acl_ldif(spec, database_dn),
        ]
    )


def render_settings(url: str, spec: SetupSpec, password_file: Path, ca_file: Path | None = None) -> str:
    """The ``directory_*`` block for the segment server's settings (TOML; values JSON-quoted)."""
    values = {
        "directory_url": url,
        "directory_bind_dn": spec.service_dn,
        "directory_password_file": str(password_file),
        "directory_base_dn": spec.base_dn,
        "directory_monitored_group_dn": spec.monitored_group_dn,
        "directory_protected_group_dn": spec.protected_group_dn,
    }
    if ca_file is not None:
        values["directory_ca_file"] = str(ca_file)
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


# -- Active Directory -------------------------------------------------------


def _ps(value: str) -> str:
    """A PowerShell single-quoted string: nothing inside is expanded. PowerShell also ends
    such a string at the typographic quotes, so every kind of single quote is doubled."""
    return "'" + "".join(ch * 2 if ch in _PS_QUOTES else ch for ch in value) + "'"


def render_powershell(spec: SetupSpec) -> str:
    """The Active Directory setup as a PowerShell script (ActiveDirectory module; no password in it)."""
    values = {
        "@@SERVICE_NAME@@": _ps(spec.service_name),
        "@@SERVICE_PATH@@": _ps(spec.base_dn),
        "@@MONITORED_NAME@@": _ps(spec.rdn_value(spec.monitored_group_dn)),
        "@@MONITORED_PATH@@": _ps(spec.parent(spec.monitored_group_dn)),
        "@@MONITORED_DN@@": _ps(spec.monitored_group_dn),
        "@@PROTECTED_NAME@@": _ps(spec.rdn_value(spec.protected_group_dn)),
        "@@PROTECTED_PATH@@": _ps(spec.parent(spec.protected_group_dn)),
        "@@PROTECTED_DN@@": _ps(spec.protected_group_dn),
    }
    text = POWERSHELL_TEMPLATE
    for marker, value in values.items():
        text = text.replace(marker, value)
    return text
