"""ICMP echo liveness probing of tunnel peers (gateway -> connectors).

The probe travels inside the WireGuard tunnel to the connector's tunnel
address, so a reply proves the whole path: the connector's uplink, its
WireGuard session and its kernel. The connector opens no socket for it.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterable

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes = b"zerogate-probe") -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number if ``packet`` (an IPv4 datagram) is our echo reply."""
    if len(packet) < 28:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    icmp_type, _, _, rid, seq = struct.unpack("!BBHHH", packet[ihl : ihl + 8])
    return seq if icmp_type == ECHO_REPLY and rid == ident else None


class Prober:
    """Sends one echo to each target per round and records when each last answered."""

    def __init__(self, source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        if source:
            self.sock.bind((source, 0))
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.last_reply: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}
        self.rtt_ms: dict[str, float] = {}

    def send(self, targets: Iterable[str]) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        now = time.monotonic()
        for t in targets:
            try:
                self.sock.sendto(echo_request(self.ident, self.seq), (t, 0))
                self.sent_at[t] = now
            except OSError:
                pass  # no route yet: the target simply stays unanswered

    def receive(self, timeout: float) -> None:
        """Collect replies for up to ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return
            try:
                packet, (addr, _) = self.sock.recvfrom(2048)
            except BlockingIOError:
                continue
            if parse_reply(packet, self.ident) is not None:
                now = time.monotonic()
                self.last_reply[addr] = now
                if addr in self.sent_at:
                    self.rtt_ms[addr] = (now - self.sent_at[addr]) * 1000

    def alive(self, target: str, within: float) -> bool:
        seen = self.last_reply.get(target)
        return seen is not None and time.monotonic() - seen <= within

    def close(self) -> None:
        self.sock.close()
