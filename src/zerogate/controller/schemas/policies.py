"""Applications (destinations behind a connector group), access policies, and
policy explain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator

from zerogate.controller.fields import (
    ClockTime,
    Description,
    DestinationPrefix,
    IpAddress,
    ObjectName,
    Username,
    plain_text,
)
from zerogate.controller.schemas.base import Strict
from zerogate.model.policy import PortRange

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DestinationIn(Strict):
    address: DestinationPrefix
    protocol: Literal["tcp", "udp", "icmp", "any"] = "tcp"
    ports: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: list[str]) -> list[str]:
        return [str(PortRange.parse(p)) for p in value]

    @model_validator(mode="after")
    def _icmp(self) -> DestinationIn:
        if self.protocol in ("icmp", "any") and self.ports:
            raise ValueError(f"protocol {self.protocol} takes no ports")
        if self.protocol in ("tcp", "udp") and not self.ports:
            raise ValueError(f"protocol {self.protocol} needs at least one port or range (1-65535)")
        return self


class ApplicationCreate(Strict):
    name: ObjectName
    description: Description = ""
    connector_group: ObjectName
    destinations: list[DestinationIn] = Field(min_length=1, max_length=100)


class ApplicationUpdate(Strict):
    description: Description | None = None
    connector_group: ObjectName | None = None
    destinations: list[DestinationIn] | None = Field(default=None, min_length=1, max_length=100)


class ApplicationOut(BaseModel):
    id: int
    name: str
    description: str
    connector_group: str
    destinations: list[dict[str, Any]]
    created_at: datetime


class TimeWindowIn(Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(_DAYS),  # type: ignore[arg-type]
        min_length=1,
        max_length=7,
    )
    start: ClockTime
    end: ClockTime
    tz: str = "UTC"

    @field_validator("tz")
    @classmethod
    def _tz(cls, value: str) -> str:
        plain_text(value)
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _nonempty(self) -> TimeWindowIn:
        if self.start == self.end:
            raise ValueError("time window start and end are equal; omit the window to allow all day")
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "days": sorted({_DAYS.index(d) for d in self.days}),
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "tz": self.tz,
        }


class PolicyCreate(Strict):
    name: ObjectName
    description: Description = ""
    groups: list[ObjectName] = Field(min_length=1, max_length=1000)
    applications: list[ObjectName] = Field(min_length=1, max_length=10000)
    require_mfa: bool = False
    time_window: TimeWindowIn | None = None
    enabled: bool = True


class PolicyUpdate(Strict):
    description: Description | None = None
    groups: list[ObjectName] | None = Field(default=None, min_length=1, max_length=1000)
    applications: list[ObjectName] | None = Field(default=None, min_length=1, max_length=10000)
    require_mfa: bool | None = None
    time_window: TimeWindowIn | None = None
    clear_time_window: bool = False
    enabled: bool | None = None


class PolicyOut(BaseModel):
    id: int
    name: str
    description: str
    groups: list[str]
    applications: list[str]
    require_mfa: bool
    time_window: dict[str, Any] | None
    enabled: bool
    created_at: datetime


class ExplainRequest(Strict):
    username: Username
    destination: IpAddress
    protocol: Literal["tcp", "udp", "icmp"] = "tcp"
    port: int | None = Field(default=None, ge=1, le=65535)
    mfa: bool = True

    @model_validator(mode="after")
    def _port_fits_protocol(self) -> ExplainRequest:
        if self.protocol == "icmp" and self.port is not None:
            raise ValueError("icmp has no ports: leave port out")
        if self.protocol != "icmp" and self.port is None:
            raise ValueError(f"{self.protocol} needs a port (1-65535)")
        return self


class ExplainResponse(BaseModel):
    allowed: bool
    policy: str | None
    reason: str
