"""Install strings: one line that lets a fresh host enroll a connector.

``zg1.<base64url of {"u": controller URL, "p": CA pin, "k": provisioning key}>``

The alphabet is ``[A-Za-z0-9._-]``, so the line survives copy-paste into any
shell without quoting. The pin makes the first contact with the controller
safe even though the host trusts nothing yet.

Errors: ``InvalidInstallString(ValueError)``, with a message that tells the
operator what to do.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from zerogate.pki.ca import InvalidPin, parse_pin
from zerogate.pki.credentials import PROVISIONING_KEY, token_kind

__all__ = ["PREFIX", "InstallString", "InvalidInstallString", "parse_install_string"]

PREFIX = "zg1."
_DAMAGED = "install string is damaged — copy the whole line again"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class InvalidInstallString(ValueError):
    """Text that is not a usable install string."""


@dataclass(frozen=True)
class InstallString:
    controller_url: str
    ca_pin: str
    key: str

    def encode(self) -> str:
        """The copy-pasteable line (validated and normalised first)."""
        payload = {
            "u": normalize_controller_url(self.controller_url),
            "p": _check_pin(self.ca_pin),
            "k": _check_key(self.key),
        }
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        return PREFIX + base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_install_string(text: str) -> InstallString:
    """Parse and validate an install string (whitespace, e.g. line wraps, is ignored)."""
    compact = re.sub(r"\s+", "", text)
    if not compact.startswith(PREFIX):
        version = re.match(r"zg(\d+)\.", compact)
        if version:
            raise InvalidInstallString(
                f"install string version zg{version.group(1)} is not supported by this "
                f"zerogate (expected it to start with {PREFIX}); upgrade zerogate or "
                "create a new install string"
            )
        raise InvalidInstallString(f"not a zerogate install string (expected it to start with {PREFIX})")
    body = compact[len(PREFIX) :]
    if not body or not re.fullmatch(r"[A-Za-z0-9_-]+", body):
        raise InvalidInstallString(_DAMAGED)
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidInstallString(_DAMAGED) from exc
    if not isinstance(payload, dict):
        raise InvalidInstallString(_DAMAGED)
    fields = {name: payload.get(name) for name in ("u", "p", "k")}
    if not all(isinstance(value, str) for value in fields.values()):
        raise InvalidInstallString(_DAMAGED)
    return InstallString(
        controller_url=normalize_controller_url(str(fields["u"])),
        ca_pin=_check_pin(str(fields["p"])),
        key=_check_key(str(fields["k"])),
    )


def normalize_controller_url(url: str) -> str:
    """Check that ``url`` is ``https://host[:port]`` and return it without a trailing slash."""
    problem = (
        f"controller URL {url!r} must be https://host or https://host:port "
        "(no path, user name, query or fragment)"
    )
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInstallString(problem) from exc
    if (
        parts.scheme.lower() != "https"
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or not parts.hostname
    ):
        raise InvalidInstallString(problem)
    host = parts.hostname
    if not _valid_host(host):
        raise InvalidInstallString(problem)
    if ":" in host:
        host = f"[{host}]"
    if port == 0:
        raise InvalidInstallString(problem)
    return f"https://{host}" + (f":{port}" if port is not None else "")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if len(host) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(label) for label in host.rstrip(".").split("."))


def _check_pin(pin: str) -> str:
    try:
        return parse_pin(pin)
    except InvalidPin as exc:
        raise InvalidInstallString(f"install string carries a bad CA pin: {exc}") from exc


def _check_key(key: str) -> str:
    if token_kind(key) != PROVISIONING_KEY:
        raise InvalidInstallString(
            f"install string does not carry a provisioning key (expected {PROVISIONING_KEY}_...); "
            "create a new install string for the connector group"
        )
    return key
