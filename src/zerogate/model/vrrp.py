"""The connector -> gateway VRRP state message: "I am the master of my group now".

A connector whose group has a virtual IP runs keepalived with its peer on the
LAN. keepalived decides which of the two is master; the gateway must then send
the group's subnets to that one at once, not after its probes notice (about a
second). So on every VRRP transition, and once a second while master, the
connector sends one small UDP datagram through the tunnel to the gateway's
tunnel address on :data:`STATE_PORT`.

Trust: the datagram arrives through WireGuard, which admits a packet from a
peer only when its source address is in that peer's allowed IPs, so the source
address names the connector (its tunnel /32) and nobody else can send from it.
The gateway still checks that the group named in the message is the sender's
own group. The body is JSON, at most :data:`MAX_BYTES` bytes, strictly parsed.

``seq`` increases with each transition of one keepalived run and starts again
when the connector restarts: the gateway orders claims by arrival, and a claim
expires when it is not repeated (:data:`CLAIM_TTL`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

STATE_PORT = 3784  # UDP, on the gateway's tunnel address only (the BFD control port: liveness)
MAX_BYTES = 256
REPEAT_EVERY = 1.0  # seconds between repeats of a master's claim
CLAIM_TTL = 3.0  # a claim not repeated for this long is forgotten (the probes decide again)

VrrpStateName = Literal["master", "backup", "fault"]
_STATES: tuple[VrrpStateName, ...] = ("master", "backup", "fault")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # an ObjectName, as groups are named


@dataclass(frozen=True)
class VrrpState:
    group: str
    state: VrrpStateName
    seq: int

    def __post_init__(self) -> None:
        if not _GROUP.fullmatch(self.group):
            raise ValueError("group: not a connector group name")
        if self.state not in _STATES:
            raise ValueError("state: must be master, backup or fault")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or not 0 <= self.seq < 2**63:
            raise ValueError("seq: must be an integer from 0 to 2^63-1")


def encode(state: VrrpState) -> bytes:
    body = json.dumps({"v": 1, "group": state.group, "state": state.state, "seq": state.seq}).encode()
    if len(body) > MAX_BYTES:
        raise ValueError("VRRP state message too long")
    return body


def decode(data: bytes) -> VrrpState:
    """The message in ``data``; ``ValueError`` (naming no received text) for anything else."""
    if len(data) > MAX_BYTES:
        raise ValueError("VRRP state message too long")
    try:
        doc = json.loads(data.decode("utf-8", errors="strict"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("VRRP state message is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"v", "group", "state", "seq"} or doc["v"] != 1:
        raise ValueError("VRRP state message has unknown fields or version")
    group, state, seq = doc["group"], doc["state"], doc["seq"]
    if not isinstance(group, str) or not isinstance(state, str) or state not in _STATES:
        raise ValueError("VRRP state message has a bad group or state")
    return VrrpState(group, state, seq)
