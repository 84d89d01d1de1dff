"""Data-plane reports: what gateways, connectors and clients post to ``/v1/report``.

A report is stored on its device and returned in every ``GET /v1/devices``,
so any enrolled device could otherwise fill the admin's listing (10 MB) or
break it (``details`` nested 500 deep). The schema here is exactly what the
daemons send (``report()`` in gateway/daemon.py and connector/daemon.py,
``PeerStatus.as_report`` in netops/wireguard.py), with every string, number,
list and map bounded, and nothing nested deeper than a peer's fields.

Reports already stored (by an older controller, or written straight into the
database) are read back through :func:`read_stored`, which never raises: a
report it cannot read is shown as unavailable, never as a 500.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from zerogate.model.text import INVISIBLE_CATEGORIES

MAX_PEERS = 10_000  # a gateway reports every connector and client it has as a peer
MAX_COUNTER = 2**63 - 1  # byte counters and ids as a 64-bit database integer holds them
# What one report may take as stored text: a full report of MAX_PEERS peers is ~4 MB.
MAX_STORED_CHARS = 8 * 1024 * 1024
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _printable(value: str) -> str:
    if not _PRINTABLE.fullmatch(value):
        raise ValueError("only printable ASCII characters are allowed")
    return value


# A connector's last handshake: ISO 8601 in UTC, e.g. 2026-05-01T12:00:00.123456+00:00.
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(\+00:00|Z)")
MAX_HINT = 500  # a connector's advice on what to check when its tunnel is down


def _utc_time(value: str) -> str:
    if not _UTC_TIME.fullmatch(value):
        raise ValueError("expected an ISO 8601 time in UTC (YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00)")
    datetime.fromisoformat(value)  # the calendar check: month 13 or Feb 30 raise ValueError
    return value


def _display_text(value: str) -> str:
    """Text shown to admins as it is: no control, invisible or bidi characters."""
    if any(unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in value):
        raise ValueError("control and invisible characters are not allowed")
    return value


Text64 = Annotated[str, Field(max_length=64), AfterValidator(_printable)]
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER)]
UtcTime = Annotated[str, Field(max_length=32), AfterValidator(_utc_time)]
Hint = Annotated[str, Field(min_length=1, max_length=MAX_HINT), AfterValidator(_display_text)]


class _Report(BaseModel):
    # Strict: a device sends exactly these types ({"up": 1} is not a bool).
    model_config = ConfigDict(extra="forbid", strict=True)


class PeerReport(_Report):
    """One WireGuard peer as the device sees it, with what the device knows about it."""

    role: Literal["gateway", "connector", "client", "unknown"]
    public_key: Text64
    endpoint: Text64 | None = None
    latest_handshake: Counter = 0  # unix time; 0 = never
    rx_bytes: Counter = 0
    tx_bytes: Counter = 0
    name: Text64 | None = None
    address: Text64 | None = None
    device_id: Annotated[int, Field(ge=1, le=MAX_COUNTER)] | None = None
    up: bool | None = None
    active: bool | None = None
    rtt_ms: Annotated[float, Field(ge=0, le=3_600_000, allow_inf_nan=False)] | None = None


class VrrpReport(_Report):
    """A connector's VRRP state (its group has a virtual IP): connector/vrrp_agent.py report()."""

    state: Literal["master", "backup", "fault", "stopped", "error"]
    virtual_ip: Text64 | None = None
    interface: Annotated[str, Field(max_length=15), AfterValidator(_printable)] | None = None
    router_id: Annotated[int, Field(ge=1, le=255)] | None = None
    problem: Hint | None = None


class ReportDetails(_Report):
    """The device's own state: gateways and connectors fill different fields."""

    revision: Counter | None = None
    listen_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    wireguard: Annotated[str, Field(max_length=32), AfterValidator(_printable)] | None = None
    controller_connected: bool | None = None
    tunnel_up: bool | None = None
    last_handshake_at: UtcTime | None = None
    tunnel_hint: Hint | None = None
    active_connectors: dict[Text64, Text64] = Field(default_factory=dict, max_length=1000)
    # seconds between the device's reports: it is offline after three missed (controller/health.py)
    report_interval: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] | None = None
    vrrp: VrrpReport | None = None  # a connector whose group has a virtual IP
    failovers: Counter | None = None  # a gateway: groups moved to another connector since it started
    nft_apply_mode: Literal["full", "elements"] | None = None  # a gateway's last table change
    nft_apply_ms: Annotated[float, Field(ge=0, le=3_600_000, allow_inf_nan=False)] | None = None
    vrrp_masters: dict[Text64, Text64] = Field(
        default_factory=dict, max_length=1000
    )  # a gateway: group -> master


class DeviceReport(_Report):
    """What a gateway, connector or client says about its data plane."""

    version: Annotated[str, Field(max_length=40), AfterValidator(_printable)]
    interface: Annotated[str, Field(max_length=15), AfterValidator(_printable)]
    peers: list[PeerReport] = Field(default_factory=list, max_length=MAX_PEERS)
    details: ReportDetails = Field(default_factory=ReportDetails)


class StoredReport(DeviceReport):
    """A report as the admin sees it: with the time the controller received it."""

    at: datetime


UNREADABLE = (
    "the stored report is unreadable (malformed or over the size limit); "
    "it is replaced by the device's next report"
)


def read_stored(raw: str | None) -> tuple[StoredReport | None, str | None]:
    """(report, None), or (None, why it is not shown) — never an exception.

    ``raw`` is the column's text, read without the driver's JSON decoding, so
    neither size nor nesting of what is in the database can hurt the reader.
    """
    if raw is None or raw == "null":
        return None, None
    if len(raw) > MAX_STORED_CHARS:
        return None, UNREADABLE
    try:
        # JSON mode: the stored time is text; the parser has its own nesting limit.
        return StoredReport.model_validate_json(raw), None
    except ValidationError:
        return None, UNREADABLE
