"""What the segment server reports to the controller: per asset, its state, the
host key it saw, preflight findings, and the flows learned since the last report;
and the directory's monitored computers when a directory is configured.

``POST /v1/segment/report`` carries one :class:`SegmentReport` (JSON from
``model_dump(mode="json")``); the controller parses it with
``SegmentReport.model_validate`` under the same strict rules as the snapshot
(:class:`zerogate.model.snapshot.Wire`: frozen, unknown fields refused, text
never taken as a number). Sizes are bounded so one report cannot hold more
than the controller is willing to store at once; the server sends large
learning batches in several reports.

Flows on the wire are :class:`ObservedFlow`; :meth:`ObservedFlow.of` and
:meth:`ObservedFlow.flow` convert to and from the learning record
:class:`zerogate.model.segment.Flow` that the pure policy code works with.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, StringConstraints

from zerogate.model.segment import Flow
from zerogate.model.snapshot import AnyAddress, AssetName, HostKeyText, Port, Timestamp, Wire

MAX_ASSETS_PER_REPORT = 2000
MAX_FLOWS_PER_ASSET = 5000
MAX_DIRECTORY_COMPUTERS = 20000
MAX_COUNTER = 2**53 - 1  # exact in every JSON reader

# Printable text without control characters, bounded (a detail, a process name, a DN).
Detail = Annotated[StrictStr, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{0,500}$")]
ProcessName = Annotated[StrictStr, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,64}$")]
DistinguishedName = Annotated[StrictStr, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,1024}$")]
PreflightName = Annotated[StrictStr, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Counter = Annotated[StrictInt, Field(ge=0, le=MAX_COUNTER)]

AssetState = Literal[
    "unreachable",  # no SSH connection (detail says why)
    "host_key_unknown",  # no key pinned yet: observed_host_key is what the host offered
    "host_key_changed",  # the host offered another key than the pinned one: management stopped
    "ready",  # reachable, nothing to enforce (monitored)
    "learning",  # observing
    "enforced",  # enforced_revision is in force on the host
    "rolled_back",  # the host rolled an enforcement back by itself (the check failed)
    "failed",  # something else went wrong (detail)
]


class ObservedFlow(Wire):
    """One learned flow on the wire (see :class:`zerogate.model.segment.Flow`)."""

    protocol: Literal["tcp", "udp"]
    direction: Literal["inbound", "outbound"]
    local_port: Port
    peer: AnyAddress
    process: ProcessName | None
    first_seen: Timestamp
    last_seen: Timestamp
    count: Annotated[StrictInt, Field(ge=1)]

    @classmethod
    def of(cls, flow: Flow) -> ObservedFlow:
        return cls(
            protocol=flow.protocol,
            direction=flow.direction,
            local_port=flow.port,
            peer=flow.peer,
            process=flow.process,
            first_seen=flow.first_seen,
            last_seen=flow.last_seen,
            count=flow.count,
        )

    def flow(self) -> Flow:
        return Flow(
            protocol=self.protocol,
            port=self.local_port,
            peer=self.peer,
            process=self.process,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            count=self.count,
            direction=self.direction,
        )


class PreflightItem(Wire):
    """One finding of an asset's preflight (nftables, conntrack, other firewall managers, sshd ports)."""

    name: PreflightName
    ok: StrictBool
    detail: Detail = ""


class AssetReport(Wire):
    asset_id: StrictInt
    state: AssetState
    detail: Detail = ""
    observed_host_key: HostKeyText | None = None
    preflight: tuple[PreflightItem, ...] = Field(default=(), max_length=64)
    ssh_ports: tuple[Port, ...] = Field(default=(), max_length=16)
    flows: tuple[ObservedFlow, ...] = Field(default=(), max_length=MAX_FLOWS_PER_ASSET)
    enforced_revision: StrictInt | None = None
    # Learning from conntrack events, since the server started observing the asset:
    # new connections it refused because its pending cap was full, and how often the
    # host's kernel said it lost events (its buffer was full; how many is not told).
    events_dropped: Counter = 0
    event_overflows: Counter = 0


class DirectoryComputer(Wire):
    """A member of the directory's monitored group, as the segment server read it."""

    dn: DistinguishedName
    name: AssetName
    address: AnyAddress | None


class SegmentReport(Wire):
    assets: tuple[AssetReport, ...] = Field(max_length=MAX_ASSETS_PER_REPORT)
    # None: no directory configured (leave directory-sourced assets alone);
    # a tuple: the monitored group's members now (assets follow it).
    directory: tuple[DirectoryComputer, ...] | None = Field(default=None, max_length=MAX_DIRECTORY_COMPUTERS)
