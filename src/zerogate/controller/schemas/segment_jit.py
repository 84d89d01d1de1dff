"""Segment just-in-time (JIT) openings: MFA-protected ports, the segment
server's request on behalf of a user, and the openings it produced.

Request bodies are strict and bounded; user and group names, prefixes and the
requester's address are checked with a full match (the shared fields). A
duration is seconds; which ones are allowed is the controller setting
``segment_jit_durations`` (checked by the service, not here, so the setting
can change without a schema change).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from zerogate.controller.fields import Cidr, IpAddress, ObjectName, Password, TotpCode, Username
from zerogate.controller.schemas.base import Strict
from zerogate.controller.schemas.segment import AssetNameField, Port

MAX_DURATION_SECONDS = 7 * 86400
MAX_NAMES = 256
MAX_SOURCES = 64

Protocol = Literal["tcp", "udp"]


class JitPortCreate(Strict):
    protocol: Protocol = "tcp"
    port: Port
    users: list[Username] = Field(default_factory=list, max_length=MAX_NAMES)
    groups: list[ObjectName] = Field(default_factory=list, max_length=MAX_NAMES)
    sources: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_SOURCES,
        description="When given, the requester's address must be inside one of these prefixes.",
    )
    max_duration: int = Field(
        default=3600,
        ge=1,
        le=MAX_DURATION_SECONDS,
        description="Longest opening (seconds); one of the controller's segment_jit_durations.",
    )


class JitPortOut(BaseModel):
    id: int
    asset: str
    protocol: str
    port: int
    users: list[str]
    groups: list[str]
    sources: list[str]
    max_duration: int


class JitRequest(Strict):
    """What a segment server forwards for a user who asked it for an opening."""

    username: Username
    password: Password
    totp: TotpCode
    source: IpAddress = Field(description="The requester's address, as the segment server saw it.")
    asset: AssetNameField
    protocol: Protocol
    port: Port
    duration: int = Field(ge=1, le=MAX_DURATION_SECONDS, description="Seconds.")


class JitRequestOut(BaseModel):
    opening_id: int
    asset: str
    source: str
    protocol: str
    port: int
    expires_at: datetime


class JitOpeningOut(BaseModel):
    id: int
    asset: str
    user: str
    source: str
    protocol: str
    port: int
    requested_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    state: Literal["active", "expired", "revoked"]
