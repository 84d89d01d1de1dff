"""Flow records to a SIEM: one RFC 5424 syslog message per record, over UDP
(one datagram each) or TCP (RFC 6587 octet counting: ``LEN SP MSG``).

Configured by ``flow_syslog = "udp://127.0.0.1:5514"`` (or ``tcp://``) in the
controller's settings. Each message carries the record as structured data::

    <134>1 2026-12-06T04:40:06.896Z ctl zerogate - flow [flow@32473 start="..." user="alice" ...]

PRI is facility local0 with severity informational for a forwarded flow,
notice for a refused one. ``flow@32473`` uses the enterprise number RFC 5612
reserves for documentation, as zerogate has none of its own. Every
PARAM-VALUE is escaped as RFC 5424 §6.3.3 asks (``"``, ``\\`` and ``]`` get a
backslash) and control or invisible characters are replaced by U+FFFD, so no
value can end its parameter, forge another or split the message. There is no
free-text MSG part.

Sending never holds up an ingest: records wait in a bounded queue (full:
dropped and counted in ``dropped``); a background task sends them and, for
TCP, reconnects after a failure. Syslog is best effort: the database (and
``GET /v1/flows``) is the record.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from zerogate.controller import background

log = logging.getLogger(__name__)

SD_ID = "flow@32473"
FACILITY = 16  # local0
QUEUE = 10_000
_TARGET = re.compile(r"(udp|tcp)://(\[[0-9a-fA-F:.]{2,45}\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})")
_HOST_CHARS = re.compile(r"[!-~]{1,255}")  # PRINTUSASCII, RFC 5424 §6.2.4
_FIELDS = (
    "start",
    "end",
    "duration",
    "user",
    "device",
    "device_id",
    "client",
    "protocol",
    "destination",
    "port",
    "source_port",
    "application",
    "policy",
    "policy_id",
    "denied",
    "bytes_out",
    "bytes_in",
    "packets_out",
    "packets_in",
    "gateway_id",
)


@dataclass(frozen=True)
class Target:
    transport: str  # udp | tcp
    host: str
    port: int


def parse_target(text: str) -> Target:
    """``udp://host:port`` or ``tcp://host:port`` (IPv6 in brackets)."""
    match = _TARGET.fullmatch(text)
    if match is None or not 1 <= int(match[3]) <= 65535:
        raise ValueError("flow_syslog must be udp://HOST:PORT or tcp://HOST:PORT")
    return Target(match[1], match[2].strip("[]"), int(match[3]))


def _clean(text: str) -> str:
    """Control and invisible characters (C*, and line/paragraph separators) as U+FFFD."""
    return "".join(
        "\ufffd" if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp") else ch
        for ch in text
    )


def param_value(value: Any) -> str:
    """An SD-PARAM value: escaped (RFC 5424 §6.3.3) and free of control characters."""
    text = _clean(str(value))
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def hostname() -> str:
    name = socket.gethostname()
    return name if _HOST_CHARS.fullmatch(name) else "-"


def format_record(record: Mapping[str, Any], host: str = "-", now: datetime | None = None) -> bytes:
    """One RFC 5424 message (no framing) for ``record`` (:func:`~zerogate.controller.services.flows.as_json`)."""
    severity = 5 if record.get("denied") else 6
    at = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    params = " ".join(
        f'{name}="{param_value(record[name])}"' for name in _FIELDS if record.get(name) is not None
    )
    msgid = "flow-refused" if record.get("denied") else "flow"
    host = host if _HOST_CHARS.fullmatch(host) else "-"
    return f"<{FACILITY * 8 + severity}>1 {at} {host} zerogate - {msgid} [{SD_ID} {params}]".encode()


def frame_tcp(message: bytes) -> bytes:
    """RFC 6587 octet counting."""
    return str(len(message)).encode() + b" " + message


class SyslogExporter:
    """Sends queued records to one collector in the background."""

    def __init__(self, target: Target, queue_size: int = QUEUE) -> None:
        self.target = target
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.host = hostname()
        self.sent = 0
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None

    def offer(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                self.queue.put_nowait(format_record(record, self.host))
            except asyncio.QueueFull:
                self.dropped += 1

    def start(self) -> None:
        self.task = background.start(self._loop(), "flow syslog export")

    async def stop(self) -> None:
        await background.stop(self.task)
        self.task = None
        if self._writer is not None:
            self._writer.close()
        if self._udp is not None:
            self._udp.close()

    async def _send(self, message: bytes) -> None:
        t = self.target
        if t.transport == "udp":
            if self._udp is None:
                loop = asyncio.get_running_loop()
                self._udp, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(t.host, t.port)
                )
            self._udp.sendto(message)
            return
        writer = self._writer
        if writer is None or writer.is_closing():
            _, fresh = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), 10)
            self._writer = writer = fresh
        writer.write(frame_tcp(message))
        await asyncio.wait_for(writer.drain(), 10)

    async def _loop(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                await self._send(message)
                self.sent += 1
            except (OSError, TimeoutError) as exc:
                self.dropped += 1
                if self._writer is not None:
                    self._writer.close()
                self._writer = None
                log.warning("flow syslog to %s:%d failed: %s", self.target.host, self.target.port, exc)
                await asyncio.sleep(1.0)  # a collector that is down is not hammered
