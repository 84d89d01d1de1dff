"""Checked field types of request bodies: names, free text, addresses, keys.

Each type parses an untrusted string once into the value the controller
stores, or raises a ValueError whose message says what is wrong and what to
send instead. Patterns are applied with ``fullmatch`` only: ``re.match`` with
``$`` accepts a trailing newline, which made ``"alice\n"`` a second,
identical-looking ``alice``. Free text may hold any printable Unicode but no
control or invisible characters (:func:`plain_text`); such a value is refused
without being quoted back.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import time
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field

from zerogate.model.text import INVISIBLE_CATEGORIES
from zerogate.pki.wireguard import InvalidKey, canonical_public_key

# All patterns are used with fullmatch only.
_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_OBJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Connector names: 1-50 printable characters (letters, digits, symbols), no
# leading/trailing space.
_CONNECTOR_NAME = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,48}[\x21-\x7e])?")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_TOTP = re.compile(r"[0-9]{6,8}")  # not \d: that also matches Arabic-Indic and other digits


def plain_text(value: str) -> str:
    """``value`` if it has no control or invisible character; the error names
    the character's code point and position, never the (untrusted) text."""
    for position, ch in enumerate(value, start=1):
        if unicodedata.category(ch) in INVISIBLE_CATEGORIES:
            raise ValueError(
                f"holds a control or invisible character (U+{ord(ch):04X} at position {position}); "
                "use printable text only"
            )
    return value


def _check(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        plain_text(value)  # first, so such a value is refused without being quoted
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


def _no_zone(value: str) -> str:
    plain_text(value)
    if "%" in value:
        # ipaddress accepts 'fe80::1%<anything>' and would store <anything>.
        raise ValueError("IPv6 zone ids ('%' and an interface) are not accepted here")
    return value


def _mapped_v4(net: IPv4Network | IPv6Network) -> IPv4Network | None:
    """The IPv4 prefix an IPv4-mapped IPv6 prefix (``::ffff:a.b.c.d/n``) stands for."""
    if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return None


def _cidr(value: str) -> str:
    text = _no_zone(value).strip()
    try:
        net = ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR prefix") from None
        raise ValueError(f"{value!r} has host bits set; did you mean {loose}?") from None
    v4 = _mapped_v4(net)
    if v4 is not None:
        # Compared with IPv4 prefixes it would never overlap anything.
        raise ValueError(f"{net} is an IPv4-mapped IPv6 prefix; write it as IPv4: {v4}")
    return str(net)


cidr_text = _cidr  # a prefix as text, checked (for fields that take a prefix or something else)


def ip_text(value: str) -> str:
    _no_zone(value)
    try:
        address = ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        raise ValueError(f"{address} is an IPv4-mapped IPv6 address; write it as IPv4: {address.ipv4_mapped}")
    return str(address)


# Address space no connector can forward to, nor a client be given.
_SPECIAL: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' (unspecified) addresses"),
    (IPv4Network("127.0.0.0/8"), "loopback addresses"),
    (IPv4Network("169.254.0.0/16"), "link-local addresses"),
    (IPv4Network("224.0.0.0/4"), "multicast addresses"),
    (IPv4Network("240.0.0.0/4"), "reserved addresses and the broadcast address"),
)


def routable_v4(prefix: str, use: str) -> IPv4Network:
    """``prefix`` as an IPv4 network the data plane can use for ``use``, or a ValueError saying why not."""
    net = ip_network(prefix)
    if not isinstance(net, IPv4Network):
        raise ValueError(f"{net}: {use} must be IPv4 (the data plane's address sets hold IPv4 only)")
    if net.prefixlen == 0:
        raise ValueError(f"{net} covers every address; use specific prefixes for {use}")
    for special, what in _SPECIAL:
        if net.subnet_of(special):
            raise ValueError(f"{net} is in {special} ({what}), which cannot be used for {use}")
        if net.overlaps(special):
            raise ValueError(f"{net} includes {special} ({what}), which cannot be used for {use}; narrow it")
    return net


def _site_subnet(value: str) -> str:
    routable_v4(value, "connector group subnets")
    return value


def _destination(value: str) -> str:
    routable_v4(value, "application destinations")
    return value


def _wg_key(value: str) -> str:
    try:
        return canonical_public_key(value)
    except InvalidKey as exc:
        raise ValueError(str(exc)) from None


def _email(value: str) -> str:
    plain_text(value)
    if value and not _EMAIL.fullmatch(value):
        raise ValueError("is not an email address (name@domain), nor empty")
    return value


def _totp(value: str) -> str:
    if not _TOTP.fullmatch(value):
        raise ValueError("a TOTP code is 6 to 8 digits (0-9) from your authenticator app")
    return value


_ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})"
)


def _time_text(value: object) -> object:
    """Points in time come as ISO 8601 text with a zone; a number would be read as a Unix time."""
    if not isinstance(value, str) or not _ISO_TIME.fullmatch(value):
        raise ValueError("a time is ISO 8601 text with a time zone, e.g. 2026-12-06T08:00:00Z")
    return value


def _clock_text(value: object) -> object:
    """Times of day come as text ('08:00'); a number would be read as seconds past midnight."""
    if not isinstance(value, str):
        raise ValueError("a time of day is text like '08:00'")
    return value


Username = Annotated[str, Field(min_length=1, max_length=64), _check(_USERNAME, "username (a-z 0-9 . _ @ -)")]
ObjectName = Annotated[
    str, Field(min_length=1, max_length=64), _check(_OBJECT_NAME, "name (letters, digits, . _ -; up to 64)")
]
ConnectorName = Annotated[
    str,
    Field(min_length=1, max_length=50),
    _check(_CONNECTOR_NAME, "connector name (1-50 letters, digits and symbols)"),
]
PlainText = AfterValidator(plain_text)
Description = Annotated[str, Field(max_length=255), PlainText]
DisplayName = Annotated[str, Field(max_length=100), PlainText]
Email = Annotated[str, Field(max_length=254), AfterValidator(_email)]
ShortText = Annotated[str, Field(max_length=100), PlainText]  # a connector's location and owner
Cidr = Annotated[str, AfterValidator(_cidr)]
SiteSubnet = Annotated[Cidr, AfterValidator(_site_subnet)]
IpAddress = Annotated[str, AfterValidator(ip_text)]
WgKey = Annotated[str, AfterValidator(_wg_key)]
Password = Annotated[str, Field(min_length=1, max_length=1024)]
TotpCode = Annotated[str, Field(min_length=6, max_length=8), AfterValidator(_totp)]
# strict=False: JSON has no time type, so strict mode would refuse every "08:00".
ClockTime = Annotated[time, Field(strict=False), BeforeValidator(_clock_text)]
# A point in time with its zone, from ISO 8601 text only (query parameters, JSON bodies).
AwareTime = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_time_text)]


def _endpoint_host(value: str) -> str:
    """A gateway's public endpoint, handed to every connector and client as is."""
    _no_zone(value)
    try:
        ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a hostname or IP address") from None
        return value.lower()
    return ip_text(value)


EndpointHost = Annotated[str, Field(max_length=253), AfterValidator(_endpoint_host)]
DestinationPrefix = Annotated[Cidr, AfterValidator(_destination)]


def no_overlap(prefixes: list[str], what: str) -> None:
    nets = [ip_network(p) for p in prefixes]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                raise ValueError(f"{what} {a} and {b} overlap")


def overlapping(a: str, b: str) -> bool:
    """Whether two prefixes share an address; an IPv4-mapped IPv6 prefix (stored
    before such input was refused) counts as the IPv4 prefix it stands for."""
    na: IPv4Network | IPv6Network = ip_network(a)
    nb: IPv4Network | IPv6Network = ip_network(b)
    na, nb = _mapped_v4(na) or na, _mapped_v4(nb) or nb
    return na.version == nb.version and na.overlaps(nb)
