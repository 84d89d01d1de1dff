"""Flow records at the gateway, the pure half: the nftables pieces that make
flows recordable, and the records built from what the kernel reports.

Why these pieces (see :mod:`zerogate.gateway.flows` for the loop that uses them):

- **Deciding policy.** A policy's accept rule stores the policy id in the low
  24 bits of the connection mark (``ct mark set ct mark and 0xff000000 or ID``);
  the high byte is left as it is (the active-active connector choice lives
  there). The kernel copies the mark into the conntrack DESTROY event, so the
  record of a forwarded flow names its policy without any lookup on the gateway.
  A mark with zero low bits is a flow no policy accepted (the gateway's own
  traffic): never recorded.
- **Refusals.** A refused packet never becomes a conntrack entry, so refusals
  are counted by nftables itself: the last rule before the rejects adds
  (source, destination, protocol, port) to the dynamic set ``refused`` with a
  per-element counter and a timeout; the gateway reads and flushes it.

:func:`mark_accepts`, :func:`refused_set` and :func:`refusal_rules` are what
:mod:`zerogate.gateway.plan` calls; :func:`forwarded_record` and
:func:`refused_records` build the records posted to ``POST /v1/flows``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from zerogate.model import nft
from zerogate.netops.conntrack import ConntrackEvent

POLICY_BITS = 0x00FFFFFF  # ours; 0xff000000 belongs to the active-active connector choice
REFUSED_SET = "refused"
REFUSED_TIMEOUT = 120  # seconds an unread refusal stays in the set (the loop reads every few)
REFUSED_SIZE = 65536  # elements; when full, further refusals are still refused, not recorded
DENIED_NO_POLICY = "no-policy"
_REFUSED_TYPE = nft.concat("ipv4_addr", "ipv4_addr", "inet_proto", "inet_service")
_REFUSED_KEY = nft.concat("ip saddr", "ip daddr", nft.META_L4PROTO, "th dport")
_ACCEPT = " accept"


def accept_mark(policy_id: int) -> str:
    """The verdict of policy ``policy_id``'s accept rules: mark, then accept.
    An id that does not fit 24 bits (never with the controller's ids) is not marked."""
    if not 0 < policy_id <= POLICY_BITS:
        return "accept"
    return f"ct mark set ct mark and 0xff000000 or {policy_id:#x} accept"


def mark_accepts(rules: Sequence[str], policy_id: int) -> list[str]:
    """``rules`` (one policy's ``... accept`` statements) with the policy's mark set before accepting."""
    return [r[: -len(_ACCEPT)] + " " + accept_mark(policy_id) if r.endswith(_ACCEPT) else r for r in rules]


def refused_set() -> str:
    """The definition of the ``refused`` set (a table-level line of ``table inet zerogate``)."""
    return (
        f"  set {REFUSED_SET} {{ type {_REFUSED_TYPE}; flags dynamic,timeout; "
        f"timeout {REFUSED_TIMEOUT}s; size {REFUSED_SIZE}; counter; }}\n"
    )


def refusal_rules() -> list[str]:
    """Rules placed just before the gateway's final rejects: remember what was refused.
    TCP and UDP only (``th dport`` means nothing for other protocols)."""
    return [
        nft.statement(
            nft.l4proto(nft.anonymous_set(["tcp", "udp"])),
            f"add @{REFUSED_SET} {{ {_REFUSED_KEY} }}",
            nft.comment("flow records: refused flows"),
        )
    ]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Linger:
    """How long conntrack keeps an entry after its last packet (the netns's sysctls):
    subtracted from a DESTROY event's time so that a flow ends when its traffic did."""

    tcp_time_wait: int = 120
    tcp_close: int = 10
    udp: int = 30
    udp_stream: int = 120

    def after(self, event: ConntrackEvent) -> int:
        c = event.connection
        if c.protocol == "tcp":
            return {"TIME_WAIT": self.tcp_time_wait, "CLOSE": self.tcp_close}.get(c.state or "", 0)
        assured = event.counters is not None and event.counters.assured
        return self.udp_stream if assured else self.udp


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def forwarded_record(
    event: ConntrackEvent, devices: Mapping[str, int], linger: Linger
) -> dict[str, Any] | None:
    """The record of a flow a policy let through (a DESTROY event), or None for a
    flow no policy marked. ``devices``: client tunnel address -> device id."""
    counters = event.counters
    if event.kind != "DESTROY" or counters is None or not counters.mark & POLICY_BITS:
        return None
    c = event.connection
    lived: float | None = counters.seconds
    start: datetime | None = None if lived is None else event.at - timedelta(seconds=lived)
    if counters.started is not None:
        start, lived = counters.started, (event.at - counters.started).total_seconds()
    end = event.at - timedelta(seconds=min(linger.after(event), lived if lived is not None else 0))
    start = end if start is None else start
    return {
        "start": _iso(min(start, end)),
        "end": _iso(end),
        "client": str(c.src),
        "device_id": devices.get(str(c.src)),
        "protocol": c.protocol,
        "destination": str(c.dst),
        "port": c.dport,
        "source_port": c.sport,
        "policy_id": counters.mark & POLICY_BITS,
        "denied": None,
        "packets_out": counters.packets_out or 0,
        "bytes_out": counters.bytes_out or 0,
        "packets_in": counters.packets_in or 0,
        "bytes_in": counters.bytes_in or 0,
    }


def _element(item: Any) -> tuple[str, str, str, int, int, int, int] | None:
    """(source, destination, protocol, port, packets, bytes, seconds left) of one set element."""
    try:
        elem = item["elem"]
        src, dst, proto, port = elem["val"]["concat"]
        counter = elem.get("counter") or {}
        packets, octets = int(counter.get("packets", 0)), int(counter.get("bytes", 0))
        left = int(elem.get("expires", 0))
        if proto not in ("tcp", "udp") or not isinstance(port, int) or not 0 <= port <= 65535:
            return None
        ipaddress.IPv4Address(src)
        ipaddress.IPv4Address(dst)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return str(src), str(dst), proto, port, packets, octets, left


def refused_records(
    listing: str, now: datetime, devices: Mapping[str, int]
) -> tuple[list[dict[str, Any]], int]:
    """Records from ``nft -j list set inet zerogate refused`` read at ``now``, and how
    many elements were not understood. Each is one (client, destination, protocol,
    port) refused since the last read; ``packets_out`` counts the attempts' packets."""
    data = json.loads(listing)
    out: list[dict[str, Any]] = []
    bad = 0
    for entry in data.get("nftables", []) if isinstance(data, dict) else []:
        body = entry.get("set") if isinstance(entry, dict) else None
        if not isinstance(body, dict):
            continue
        for item in body.get("elem", []):
            parsed = _element(item) if isinstance(item, dict) else None
            if parsed is None:
                bad += 1
                continue
            src, dst, proto, port, packets, octets, left = parsed
            first = now - timedelta(seconds=max(0, REFUSED_TIMEOUT - left))
            out.append(
                {
                    "start": _iso(first),
                    "end": _iso(now),
                    "client": src,
                    "device_id": devices.get(src),
                    "protocol": proto,
                    "destination": dst,
                    "port": port,
                    "source_port": None,
                    "policy_id": None,
                    "denied": DENIED_NO_POLICY,
                    "packets_out": packets,
                    "bytes_out": octets,
                    "packets_in": 0,
                    "bytes_in": 0,
                }
            )
    return out, bad
