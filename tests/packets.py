"""Hand-made packets and per-rule counters for tests of nftables tables in namespaces:
what a table let through, counted on the same hook before and after it, and TCP
segments or VRRP packets no socket of the namespace would send by itself."""

from __future__ import annotations

import json
import socket
import struct
from subprocess import CompletedProcess
from typing import Protocol

from nstools import call_in_netns
from zerogate.testbed.lab import wait_for


class RunsCommands(Protocol):
    """What :class:`Counters` needs of a namespace: a :class:`Netns`, or an adapter to a topology's."""

    def run(self, *argv: str, input: str | None = None, check: bool = True) -> CompletedProcess[str]: ...


class Counters:
    """Two counter chains around our filter on one hook in ``ns`` (table ``inet zsn_probe``):
    ``seen`` at priority -10 counts what reached the hook, ``passed`` at +10 what our
    table (priority 0) let through (its drop is final; an accept does not stop later chains).

    Both run in the same traversal of the hook, so once ``seen`` shows a packet, its
    ``passed`` count is final: no waiting for something not to happen."""

    def __init__(self, ns: RunsCommands, hook: str, matches: list[str]) -> None:
        self.ns, self.matches = ns, matches
        rules = "".join(f"    {m} counter\n" for m in matches)
        ns.run(
            "nft",
            "-f",
            "-",
            input=(
                "table inet zsn_probe {\n"
                f"  chain seen {{\n    type filter hook {hook} priority -10; policy accept;\n{rules}  }}\n"
                f"  chain passed {{\n    type filter hook {hook} priority 10; policy accept;\n{rules}  }}\n"
                "}\n"
            ),
        )

    def read(self) -> dict[str, list[int]]:
        doc = json.loads(self.ns.run("nft", "-j", "list", "table", "inet", "zsn_probe").stdout)
        out: dict[str, list[int]] = {"seen": [], "passed": []}
        for item in doc["nftables"]:
            rule = item.get("rule")
            if rule:
                out[rule["chain"]] += [e["counter"]["packets"] for e in rule["expr"] if "counter" in e]
        return out

    def remove(self) -> None:
        self.ns.run("nft", "delete", "table", "inet", "zsn_probe", check=False)

    def passed_once_seen(self, n: int) -> list[int]:
        """Wait until every match has seen ``n`` packets; what passed of them."""
        wait_for(lambda: self.read()["seen"] == [n] * len(self.matches), 5, f"{n} packets at each probe")
        return self.read()["passed"]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(x) for x in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10}


def send_tcp_segment(ns: str, src: str, dst: str, dport: int, flags: str, count: int = 1) -> None:
    """Send ``count`` bare TCP segments (``flags`` e.g. ``"ack"``, ``"syn"``) from ``src`` in
    namespace ``ns`` (a full name under /run/netns) with a raw socket: a segment of a flow
    the kernel of ``ns`` never opened, as a server continuing a failed-over flow sends it."""
    bits = sum(TCP_FLAGS[f] for f in flags.split("|"))
    sport = 40000 + dport % 20000
    header = struct.pack(
        "!HHIIBBHHH", sport, dport, 1000, 2000 if bits & 0x10 else 0, 5 << 4, bits, 64240, 0, 0
    )
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    segment = header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
            s.bind((src, 0))
            for _ in range(count):
                s.sendto(segment, (dst, 0))

    call_in_netns(ns, send)
