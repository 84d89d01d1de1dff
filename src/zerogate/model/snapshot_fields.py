"""The field types of the config snapshot (:mod:`zerogate.model.snapshot`) and its
base model: what every value from the wire is held to before a planner renders it
into a WireGuard config or an nftables script (patterns, strict scalars, text-only
addresses and times). Split out of the snapshot module by concern; that module
re-exports every name here."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    model_validator,
)


def _text(value: object) -> object:
    """Addresses, prefixes and times come as text (or, from the controller, as
    the typed value); ipaddress and pydantic would also take a number."""
    if isinstance(value, str | IPv4Address | IPv6Address | IPv4Network | IPv6Network | datetime):
        return value
    raise ValueError("expected text")


def _iso(value: datetime) -> str:
    return value.isoformat()


Address = Annotated[IPv4Address, BeforeValidator(_text)]
Prefix = Annotated[IPv4Network, BeforeValidator(_text)]
AnyPrefix = Annotated[IPv4Network | IPv6Network, BeforeValidator(_text)]
AnyAddress = Annotated[IPv4Address | IPv6Address, BeforeValidator(_text)]
# isoformat() as the controller wrote it before ("+00:00", not pydantic's "Z")
Timestamp = Annotated[
    AwareDatetime, BeforeValidator(_text), PlainSerializer(_iso, return_type=str, when_used="json")
]
Port = Annotated[StrictInt, Field(ge=1, le=65535)]
# Rendered into the WireGuard config: 44 base64 characters, the length of a key
# (the controller checked the key itself at enrollment).
WgKeyText = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9+/]{43}[A-Za-z0-9+/=]$")]
# A hostname or IP address, as the controller accepted it; rendered as "Endpoint = host:port".
EndpointHost = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,253}$")]
# A segment asset's name as the inventory holds it (host name or directory cn).
AssetName = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")]
# The account the segment server logs in with: a POSIX user name for a Linux asset (SSH);
# for a Windows asset the WinRM account (user, DOMAIN\user or user@REALM), checked per os
# by SegmentAsset. 32 characters at most either way (the controller's column).
SSH_USER = r"[a-z_][a-z0-9_-]{0,31}"
WINRM_USER = r"[A-Za-z0-9][A-Za-z0-9._@\\-]{0,31}"
AccountName = Annotated[StrictStr, StringConstraints(pattern=rf"^(?:{SSH_USER}|{WINRM_USER})$")]
# A pinned SSH host key as OpenSSH writes it in known_hosts: type and base64 key, no comment;
# or, for a Windows asset, its WinRM listener certificate: the base64 SHA-256 of its DER.
SSH_HOST_KEY = r"(?:ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) [A-Za-z0-9+/]{16,1400}={0,3}"
X509_PIN = r"x509-sha256 [A-Za-z0-9+/]{43}="
HostKeyText = Annotated[StrictStr, StringConstraints(pattern=rf"^(?:{SSH_HOST_KEY}|{X509_PIN})$")]
SchemaVersion = Annotated[StrictStr, StringConstraints(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}$")]

# nftables element text, checked by pattern (fast for the half million elements of a large site).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_RANGE = rf"{_IPV4}(?:-{_IPV4})?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0)"
SourceText = Annotated[StrictStr, StringConstraints(pattern=rf"^{_IPV4}$")]
AddressRange = Annotated[StrictStr, StringConstraints(pattern=rf"^{_RANGE}$")]
ServiceElement = Annotated[
    StrictStr, StringConstraints(pattern=rf"^{_RANGE} \. (?:tcp|udp) \. {_PORT}(?:-{_PORT})?$")
]


class Wire(BaseModel):
    """Base of every snapshot part: frozen, unknown fields refused unless the
    document is of a newer minor version (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _newer_minor(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, Mapping) and isinstance(info.context, Mapping) and info.context.get("newer"):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data
