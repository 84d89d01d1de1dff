"""ss on a segment asset: the listening sockets and their processes (pure).

The segment server runs :func:`listeners_argv` on the asset over SSH and reads
the text with :func:`parse_listeners`. Format read (iproute2 6.1, captured from
a real kernel; fixtures in the tests), one socket a line, no header::

    udp UNCONN 0      0                 0.0.0.0:5353 0.0.0.0:* users:(("python3",pid=15791,fd=5))
    udp UNCONN 0      0      [fd77::1]%zgslcapa:546     [::]:* users:(("python3",pid=17690,fd=5))
    tcp LISTEN 0      128                     *:8080       *:* users:(("nginx",pid=2,fd=6),("nginx",pid=1,fd=6))

The local address is ``*`` (an IPv6 socket that takes IPv4 too), an IPv4
address, or a bracketed IPv6 one, optionally bound to an interface (``%lo``,
ignored here). ``-p`` needs root: without it the process column is missing
and the process unknown. ss copies process names as the kernel holds them
(up to 15 bytes, quotes and spaces included); several processes sharing a
socket are recorded as their sorted distinct names joined by commas.

Lines not understood are counted (``skipped``) and left out, never an
exception; a process name with control or invisible characters skips its line.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from zerogate.model.segment import PROCESS_NAME_MAX, Address, Listener, SegmentValueError

_STATES = {"tcp": "LISTEN", "udp": "UNCONN"}
_PORT = re.compile(r"[0-9]{1,5}")
# ss cuts a name at its first ")" (it reads /proc/PID/stat), so ")" ends each entry
# and the pattern cannot backtrack across entries
_USER = r'\("([^)]{1,64})",pid=[0-9]+,fd=[0-9]+\)'
_USERS = re.compile(rf"users:\(({_USER}(?:,{_USER})*)\)")
_ONE_USER = re.compile(_USER)
_USERS_MAX = 16384  # a few hundred workers sharing one socket; bounds the regex's work


@dataclass(frozen=True, slots=True)
class SsListeners:
    listeners: tuple[Listener, ...]
    skipped: int = 0


def listeners_argv() -> list[str]:
    """TCP and UDP listening sockets, numeric, with processes (``-p`` needs root)."""
    return ["ss", "-H", "-tuln", "-p"]


def _local(text: str) -> tuple[Address | None, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise SegmentValueError(f"no port in {text!r}")
    host, percent, interface = host.partition("%")
    if percent and not interface:
        raise SegmentValueError(f"empty interface in {text!r}")
    if host == "*":
        return None, int(port_text)
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError as exc:
        raise SegmentValueError(f"not an address: {host!r}") from exc
    if bracketed != (address.version == 6):
        raise SegmentValueError(f"IPv6 addresses and only they come in brackets: {host!r}")
    return address, int(port_text)


def _process(text: str) -> str | None:
    if not text:
        return None
    if len(text) > _USERS_MAX:
        raise SegmentValueError("process column too long")
    match = _USERS.fullmatch(text)
    if match is None:
        raise SegmentValueError(f"process column not understood: {text!r}")
    names = sorted({m[1] for m in _ONE_USER.finditer(match[1])})
    joined = ",".join(names)
    if len(joined) > PROCESS_NAME_MAX:
        joined = f"{names[0]},+{len(names) - 1}"
    return joined


def _listener(line: str) -> Listener:
    fields = line.split(maxsplit=6)
    if len(fields) < 6:
        raise SegmentValueError("too few columns")
    netid, state, local = fields[0], fields[1], fields[4]
    if _STATES.get(netid) != state:
        raise SegmentValueError(f"not a listening TCP or UDP socket: {netid} {state}")
    address, port = _local(local)
    process = _process(fields[6].strip() if len(fields) > 6 else "")
    return Listener("tcp" if netid == "tcp" else "udp", address, port, process)


def parse_listeners(text: str) -> SsListeners:
    """The output of :func:`listeners_argv`, in its order."""
    listeners: list[Listener] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            listeners.append(_listener(line))
        except SegmentValueError:
            skipped += 1
    return SsListeners(tuple(listeners), skipped)
