"""conntrack on a segment asset: the commands to run and parsers of their output (pure).

The segment server runs these on the asset over SSH, so this module builds argv
and reads text; it starts nothing itself. Formats read (conntrack-tools 1.4,
captured from a real kernel; the fixtures are in the tests)::

    conntrack -L -o extended
    ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=53474 dport=9090 \
src=10.77.0.1 dst=10.77.0.2 sport=9090 dport=53474 [ASSURED] mark=0 use=1

    timeout 5 conntrack -E -e NEW -o timestamp,extended
    [1796457758.548874]	    [NEW] ipv6     10 udp      17 30 src=fd77::2 dst=fd77::1 \
sport=40307 dport=5353 [UNREPLIED] src=fd77::1 dst=fd77::2 sport=5353 dport=40307

(one line each). ``timeout`` ends the event stream with exit status 124, which
is the normal end, and conntrack writes its "N flow entries/events have been
shown." summary to stderr. The segment server's long-lived stream
(:func:`stream_argv`) has no ``timeout``; its stderr is read with stdout, so a
"WARNING: We have hit ENOBUFS! We are losing events." (the kernel dropped events
because the netlink socket's buffer was full; the number is not told) is counted
in ``overflows``, and its two explanation lines and the buffer-size notice are
left out like the summary.

Parsing is tolerant of lines and tokens it does not understand: such a line is
counted (``skipped``) and left out, never an exception; TCP and UDP entries
are strict on the fields used (family and protocol numbers that agree, two
address tuples of the announced family, ports 1-65535 written in ASCII digits).
Other protocols (ICMP, SCTP, GRE...) are counted as ``unsupported``.

With ``net.netfilter.nf_conntrack_acct=1`` and ``nf_conntrack_timestamp=1``, an
event printed with ``-o timestamp,extended,id`` also carries ``packets=`` and
``bytes=`` per direction, the connection mark, ``delta-time=`` (seconds the
entry lived) and the entry id::

    [1796532006.896785]	[DESTROY] ipv4     2 tcp      6 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 \
sport=54946 dport=5000 packets=6 bytes=398 src=127.0.0.1 dst=127.0.0.1 sport=5000 dport=54946 \
packets=6 bytes=3388 [ASSURED] mark=7 delta-time=1 id=3454568811

Those extras arrive as :class:`FlowCounters` on the event (None where absent), the
type the gateway's flow records use (their events come from ctnetlink directly:
:mod:`zerogate.gateway.flow_netlink`).

Conntrack in a network namespace only tracks once something in it registers
the conntrack hooks (a ``ct`` expression in nftables, NAT...); during learning
the segment server loads :func:`learning_table` for that, and removes it with
:func:`unload_learning_argv` when learning ends. Connections open before that
are picked up from their next packet (TCP loose tracking), with whichever side
sent it as the original direction.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from zerogate.model.segment import Address, Connection, SegmentValueError

LEARNING_TABLE = "zerogate_learn"  # inet family; enforcement lives in inet zerogate_segment
_FAMILIES = {"ipv4": ("2", 4), "ipv6": ("10", 6)}
_PROTOCOLS = {"tcp": "6", "udp": "17"}
_EVENT_KINDS = frozenset({"NEW", "UPDATE", "DESTROY"})
_PORT = re.compile(r"[0-9]{1,5}")
_NUMBER = re.compile(r"[0-9]+")
_STATE = re.compile(r"[A-Z][A-Z_]*")
_STAMP = re.compile(r"\[([0-9]{1,12})\.([0-9]{1,9})\]")
_SUMMARY = re.compile(r"conntrack v\S+ \(conntrack-tools\): \d+ flow (entries|events) ha(s|ve) been shown\.")
_OVERFLOW = re.compile(
    r"(conntrack v\S+ \(conntrack-tools\): )?WARNING: We have hit ENOBUFS! We are losing events\."
)
_EXPLAINED = re.compile(
    r"This message means that the current netlink socket buffer size is too small\."
    r"|Please, check --buffer-size in conntrack\(8\) manpage\."
    r"|(conntrack v\S+ \(conntrack-tools\): )?NOTICE: Netlink socket buffer size has been set to \d+ bytes\."
)


@dataclass(frozen=True, slots=True)
class ConntrackEntries:
    """The TCP and UDP entries of one ``conntrack -L`` listing, in listing order."""

    connections: tuple[Connection, ...]
    skipped: int = 0  # lines not understood
    unsupported: int = 0  # well-formed entries of other protocols


@dataclass(frozen=True, slots=True)
class FlowCounters:
    """What an event says beyond the tuple (each None when the kernel did not add it)."""

    packets_out: int | None = None  # original direction (client -> destination)
    bytes_out: int | None = None
    packets_in: int | None = None  # reply direction
    bytes_in: int | None = None
    mark: int = 0
    seconds: int | None = None  # delta-time: how long the entry lived
    entry_id: int | None = None
    assured: bool = False  # traffic was seen both ways (conntrack's ASSURED)
    started: datetime | None = None  # when the entry was created (nf_conntrack_timestamp)


@dataclass(frozen=True, slots=True)
class ConntrackEvent:
    at: datetime
    kind: str  # NEW, UPDATE or DESTROY
    connection: Connection
    counters: FlowCounters | None = None


@dataclass(frozen=True, slots=True)
class ConntrackEvents:
    events: tuple[ConntrackEvent, ...]
    skipped: int = 0
    unsupported: int = 0
    overflows: int = 0  # "We have hit ENOBUFS" warnings: the kernel lost events here


# --------------------------------------------------------------------------- commands


def list_argv() -> list[str]:
    """Every tracked connection, IPv4 and IPv6."""
    return ["conntrack", "-L", "-o", "extended"]


def events_argv(seconds: int) -> list[str]:
    """New connections for ``seconds`` seconds (``timeout`` ends it with status 124)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= 86400:
        raise ValueError(f"event capture must last 1-86400 seconds, not {seconds!r}")
    return ["timeout", str(seconds), "conntrack", "-E", "-e", "NEW", "-o", "timestamp,extended"]


def stream_argv() -> list[str]:
    """New connections until the process is stopped: the segment server's event stream.
    Fixed argv (it is a sudoers line): no file, no filter, no buffer size."""
    return ["conntrack", "-E", "-e", "NEW", "-o", "timestamp,extended"]


def learning_table() -> str:
    """An ``nft -f`` script that (re)creates ``table inet zerogate_learn``: one
    accept-only input chain whose ``ct state`` match makes the kernel track
    connections in this network namespace. It changes no verdict."""
    name = f"inet {LEARNING_TABLE}"
    return (
        f"table {name} {{}}\n"
        f"delete table {name}\n"
        f"table {name} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        "    ct state new counter\n"
        "  }\n"
        "}\n"
    )


def unload_learning_argv() -> list[str]:
    return ["nft", "delete", "table", "inet", LEARNING_TABLE]


# --------------------------------------------------------------------------- parsing


class _Unsupported(Exception):
    """A well-formed entry of a protocol other than TCP and UDP."""


def _address(text: str, version: int) -> Address:
    if "%" in text:  # ipaddress would take an IPv6 scope; conntrack never prints one
        raise SegmentValueError(f"address with a scope: {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        raise SegmentValueError(f"not an address: {text!r}") from exc
    if address.version != version:
        raise SegmentValueError(f"{text} is not an IPv{version} address")
    return address


def _port(text: str) -> int:
    if not _PORT.fullmatch(text):
        raise SegmentValueError(f"not a port: {text!r}")
    return int(text)


def _entry(tokens: list[str]) -> Connection:
    """One entry from its tokens (family first); raises on anything it cannot trust."""
    if len(tokens) < 4 or tokens[0] not in _FAMILIES:
        raise SegmentValueError("not a conntrack entry")
    number, version = _FAMILIES[tokens[0]]
    if tokens[1] != number or not _NUMBER.fullmatch(tokens[3]):
        raise SegmentValueError("family or protocol number does not match")
    protocol = tokens[2]
    if protocol not in _PROTOCOLS:
        raise _Unsupported(protocol)
    if tokens[3] != _PROTOCOLS[protocol]:
        raise SegmentValueError("protocol number does not match its name")
    rest = tokens[4:]
    if rest and _NUMBER.fullmatch(rest[0]):  # seconds left (absent on DESTROY events)
        rest = rest[1:]
    state = None
    if rest and _STATE.fullmatch(rest[0]):
        state, rest = rest[0], rest[1:]
    if protocol == "tcp" and state is None:
        raise SegmentValueError("a TCP entry without a state")
    values: dict[str, list[str]] = {"src": [], "dst": [], "sport": [], "dport": []}
    flags: set[str] = set()
    for token in rest:
        key, sep, value = token.partition("=")
        if sep and key in values:
            values[key].append(value)
        elif token.startswith("[") and token.endswith("]"):
            flags.add(token[1:-1])
    if any(len(v) != 2 for v in values.values()):
        raise SegmentValueError("an entry needs exactly an original and a reply tuple")
    return Connection(
        protocol="tcp" if protocol == "tcp" else "udp",
        src=_address(values["src"][0], version),
        dst=_address(values["dst"][0], version),
        sport=_port(values["sport"][0]),
        dport=_port(values["dport"][0]),
        state=state,
        replied="UNREPLIED" not in flags,
    )


_COUNTED = frozenset({"packets", "bytes", "mark", "delta-time", "id"})
_MAX_COUNTER = 1 << 64


def _counters(tokens: list[str]) -> FlowCounters | None:
    """The accounting, mark, lifetime and id tokens of an event line; None when it has none.
    A malformed value raises (the line is skipped, as for a bad tuple)."""
    values: dict[str, list[int]] = {}
    assured = False
    for word in tokens:
        key, sep, value = word.partition("=")
        if sep and key in _COUNTED:
            if not _NUMBER.fullmatch(value) or len(value) > 20 or int(value) >= _MAX_COUNTER:
                raise SegmentValueError(f"not a counter: {key}")
            values.setdefault(key, []).append(int(value))
        elif word == "[ASSURED]":
            assured = True
    if not values and not assured:
        return None
    packets, octets = values.get("packets", []), values.get("bytes", [])
    if len(packets) not in (0, 2) or len(octets) not in (0, 2):
        raise SegmentValueError("accounting needs both directions")
    mark, seconds, entry = values.get("mark", [0]), values.get("delta-time", []), values.get("id", [])
    if len(mark) != 1 or len(seconds) > 1 or len(entry) > 1 or mark[0] >= 1 << 32:
        raise SegmentValueError("repeated mark, delta-time or id")
    return FlowCounters(
        packets_out=packets[0] if packets else None,
        bytes_out=octets[0] if octets else None,
        packets_in=packets[1] if packets else None,
        bytes_in=octets[1] if octets else None,
        mark=mark[0],
        seconds=seconds[0] if seconds else None,
        entry_id=entry[0] if entry else None,
        assured=assured,
    )


def _is_noise(line: str) -> bool:
    return not line.strip() or _SUMMARY.fullmatch(line.strip()) is not None


def parse_entries(text: str) -> ConntrackEntries:
    """The output of :func:`list_argv`."""
    connections: list[Connection] = []
    skipped = unsupported = 0
    for line in text.splitlines():
        if _is_noise(line):
            continue
        try:
            connections.append(_entry(line.split()))
        except _Unsupported:
            unsupported += 1
        except SegmentValueError:  # every field check raises this (a ValueError)
            skipped += 1
    return ConntrackEntries(tuple(connections), skipped, unsupported)


def _stamp(token: str) -> datetime:
    match = _STAMP.fullmatch(token)
    if match is None:
        raise SegmentValueError(f"not a timestamp: {token!r}")
    seconds, fraction = int(match[1]), match[2].ljust(6, "0")[:6]
    try:
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=int(fraction))
    except (OverflowError, OSError, ValueError) as exc:
        raise SegmentValueError(f"timestamp out of range: {token!r}") from exc


def parse_events(text: str) -> ConntrackEvents:
    """The output of :func:`events_argv` or :func:`stream_argv` (``-o timestamp,extended``),
    stderr included or not."""
    events: list[ConntrackEvent] = []
    skipped = unsupported = overflows = 0
    for line in text.splitlines():
        if _is_noise(line) or _EXPLAINED.fullmatch(line.strip()):
            continue
        if _OVERFLOW.fullmatch(line.strip()):
            overflows += 1
            continue
        tokens = line.split()
        try:
            kind = tokens[1][1:-1] if len(tokens) > 1 else ""
            if kind not in _EVENT_KINDS or tokens[1] != f"[{kind}]":
                raise SegmentValueError("not an event line")
            entry = tokens[2:]
            events.append(ConntrackEvent(_stamp(tokens[0]), kind, _entry(entry), _counters(entry)))
        except _Unsupported:
            unsupported += 1
        except SegmentValueError:
            skipped += 1
    return ConntrackEvents(tuple(events), skipped, unsupported, overflows)
