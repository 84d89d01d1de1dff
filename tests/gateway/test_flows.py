"""Flow records at the gateway: the conntrack DESTROY parsers (text fixtures captured
from a real kernel; ctnetlink messages built byte by byte and read live from a real kernel), the nftables pieces (loaded into a real nftables in a
``zfl`` namespace: the mark and the refusal set do what the records assume),
record building, and the recorder's bounded queue when the controller is away.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from zerogate.gateway.flow_netlink import parse_messages
from zerogate.gateway.flow_rules import (
    DENIED_NO_POLICY,
    REFUSED_TIMEOUT,
    Linger,
    accept_mark,
    forwarded_record,
    mark_accepts,
    refusal_rules,
    refused_records,
    refused_set,
)
from zerogate.gateway.flows import FlowRecorder
from zerogate.netops import conntrack
from zerogate.netops.command import run, spawn
from zerogate.netops.controller_api import ControllerUnreachable
from zerogate.testbed.lab import wait_for

# Captured (conntrack v1.4.7, kernel 6.x): TCP after TIME_WAIT with accounting, the policy mark
# in the low bits and another owner's bit in the high byte; a UDP entry deleted by hand.
TCP_DESTROY = (
    "[1796532006.896785]\t[DESTROY] ipv4     2 tcp      6 TIME_WAIT src=100.64.0.2 dst=10.1.0.10 "
    "sport=54946 dport=80 packets=6 bytes=398 src=10.1.0.10 dst=100.64.0.2 sport=80 dport=54946 "
    "packets=6 bytes=3388 [ASSURED] mark=16777223 delta-time=3 id=3454568811"
)
UDP_DESTROY = (
    "[1796532590.999402]\t[DESTROY] ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=58996 "
    "dport=9 packets=1 bytes=29 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=9 dport=58996 packets=0 "
    "bytes=0 mark=5 delta-time=0 id=813315453 [USERSPACE] portid=4145522565"
)
AT = datetime.fromtimestamp(1796532006, UTC).replace(microsecond=896785)


def test_destroy_event_carries_bytes_mark_lifetime_and_id() -> None:
    parsed = conntrack.parse_events(TCP_DESTROY + "\n" + UDP_DESTROY + "\n")
    assert (parsed.skipped, parsed.unsupported) == (0, 0)
    tcp, udp = parsed.events
    assert (tcp.kind, tcp.connection.state, tcp.connection.dport) == ("DESTROY", "TIME_WAIT", 80)
    c = tcp.counters
    assert c is not None
    assert (c.packets_out, c.bytes_out, c.packets_in, c.bytes_in) == (6, 398, 6, 3388)
    assert (c.mark, c.seconds, c.entry_id, c.assured) == (0x01000007, 3, 3454568811, True)
    assert udp.counters is not None and not udp.counters.assured and udp.counters.bytes_in == 0


def test_events_without_extras_keep_their_old_shape() -> None:
    line = (
        "[1796457758.548874]\t    [NEW] ipv6     10 udp      17 30 src=fd77::2 dst=fd77::1 "
        "sport=40307 dport=5353 [UNREPLIED] src=fd77::1 dst=fd77::2 sport=5353 dport=40307"
    )
    (event,) = conntrack.parse_events(line).events
    assert event.counters is None


@pytest.mark.parametrize(
    "bad",
    [
        TCP_DESTROY.replace("bytes=398", "bytes=39x8"),
        TCP_DESTROY.replace(" packets=6 bytes=3388", ""),  # one direction only
        TCP_DESTROY.replace("mark=16777223", "mark=16777223 mark=1"),
        TCP_DESTROY.replace("bytes=398", "bytes=" + "9" * 21),
    ],
)
def test_malformed_counters_skip_the_line(bad: str) -> None:
    parsed = conntrack.parse_events(bad)
    assert (parsed.events, parsed.skipped) == ((), 1)


def test_forwarded_record_takes_policy_from_the_low_bits_and_subtracts_time_wait() -> None:
    (event,) = conntrack.parse_events(TCP_DESTROY).events
    record = forwarded_record(event, {"100.64.0.2": 42}, Linger(tcp_time_wait=2))
    assert record is not None
    assert (record["policy_id"], record["device_id"], record["client"]) == (7, 42, "100.64.0.2")
    assert (record["destination"], record["port"], record["protocol"]) == ("10.1.0.10", 80, "tcp")
    assert (record["bytes_out"], record["bytes_in"]) == (398, 3388)
    start, end = datetime.fromisoformat(record["start"]), datetime.fromisoformat(record["end"])
    assert end == (AT - timedelta(seconds=2)).replace(microsecond=896000)
    assert end - start == timedelta(seconds=1)  # lived 3 s, of which 2 in TIME_WAIT


def test_unmarked_flows_and_other_events_are_not_recorded() -> None:
    unmarked = TCP_DESTROY.replace("mark=16777223", "mark=16777216")  # only the high byte
    new = TCP_DESTROY.replace("[DESTROY]", "[NEW]")
    for line in (unmarked, new):
        (event,) = conntrack.parse_events(line).events
        assert forwarded_record(event, {}, Linger()) is None


def test_accept_mark_keeps_the_high_byte_and_leaves_other_verdicts() -> None:
    assert accept_mark(7) == "ct mark set ct mark and 0xff000000 or 0x7 accept"
    assert accept_mark(0) == accept_mark(1 << 24) == "accept"
    rules = mark_accepts(["ip saddr @p7_src accept", "ip saddr @p7_src drop"], 7)
    assert rules == [
        "ip saddr @p7_src ct mark set ct mark and 0xff000000 or 0x7 accept",
        "ip saddr @p7_src drop",
    ]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"zfl-u{uuid.uuid4().hex[:6]}"
    run(["ip", "netns", "add", name])
    try:
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


def _in(ns: str, *argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", ns, *argv], input=input, timeout=30)


def _table(policy_id: int) -> str:
    """Output-hook copy of the gateway's pieces: TCP 5000 is granted, anything else refused."""
    accept = mark_accepts(["tcp dport 5000 accept"], policy_id)[0]
    return (
        "table inet zerogate {\n"
        + refused_set()
        + "  chain out {\n    type filter hook output priority filter; policy accept;\n"
        + "    oifname != lo accept\n    ct state established,related accept\n"
        + "    ct mark set 0x2a000000\n"  # the high byte's owner was here first
        + f"    {accept}\n"
        + "".join(f"    {r}\n" for r in refusal_rules())
        + "    meta l4proto tcp reject with tcp reset\n  }\n}\n"
    )


# Runs inside the namespace: the gateway's own ctnetlink reader, until the flow to port 5000 ends.
READER = """
import json, sys
from datetime import UTC, datetime
from zerogate.gateway.flow_netlink import DestroyEvents, parse_messages
from zerogate.gateway.flow_rules import Linger, forwarded_record
events = DestroyEvents.open()
print("ready", flush=True)
while True:
    data = events.receive()
    for e in parse_messages(data or b"", datetime.now(UTC)).events:
        if e.connection.dport == 5000:
            print(json.dumps([e.counters.mark, forwarded_record(e, {"127.0.0.1": 9}, Linger())]), flush=True)
            sys.exit(0)
"""


def test_real_kernel_marks_counts_and_remembers_refusals(netns: str) -> None:
    _in(netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1")
    _in(netns, "nft", "-f", "-", input=_table(0x123))
    reader = spawn(
        ["ip", "netns", "exec", netns, sys.executable, "-c", READER], stdout=subprocess.PIPE, stderr=None
    )
    server = spawn(
        ["ip", "netns", "exec", netns, "python3", "-m", "http.server", "5000", "--bind", "127.0.0.1"]
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline() == b"ready\n"
        wait_for(lambda: _in(netns, "ss", "-Hltn", "sport = :5000").stdout.strip() != "", 10, "http server")
        _in(netns, "curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:5000/")
        refused = run(["ip", "netns", "exec", netns, "curl", "-sS", "http://127.0.0.1:5001/"], check=False)
        assert refused.returncode != 0
        _in(netns, "conntrack", "-D", "-p", "tcp")  # end the TIME_WAIT entry now
        mark, record = json.loads(reader.stdout.readline())
        listing = _in(netns, "nft", "-j", "list", "set", "inet", "zerogate", "refused").stdout
    finally:
        for proc in (server, reader):
            proc.terminate()
            proc.wait(timeout=10)
    assert mark == 0x2A000123  # the policy in the low bits, the high byte kept
    assert record["policy_id"] == 0x123 and record["device_id"] == 9 and record["port"] == 5000
    assert record["bytes_out"] > 0 and record["bytes_in"] > record["bytes_out"]
    start, end = datetime.fromisoformat(record["start"]), datetime.fromisoformat(record["end"])
    assert timedelta(0) <= end - start < timedelta(seconds=10)
    records, bad = refused_records(listing, datetime.now(UTC), {})
    assert bad == 0
    assert [(r["destination"], r["protocol"], r["port"], r["denied"]) for r in records] == [
        ("127.0.0.1", "tcp", 5001, DENIED_NO_POLICY)
    ]
    assert records[0]["packets_out"] >= 1 and records[0]["bytes_out"] > 0


def _nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind | (0x8000 if nested else 0)) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _destroy(proto: int = 6, src: bytes = bytes([100, 64, 0, 2]), state: int = 7) -> bytes:
    """A ctnetlink DELETE message as the kernel sends it (attribute numbers of nfnetlink_conntrack.h)."""
    ip = _nla(1, src) + _nla(2, bytes([10, 1, 0, 10]))
    l4 = _nla(1, bytes([proto])) + _nla(2, (54946).to_bytes(2, "big")) + _nla(3, (80).to_bytes(2, "big"))
    orig = _nla(1, ip, True) + _nla(2, l4, True)

    def counters(packets: int, octets: int) -> bytes:
        return _nla(1, packets.to_bytes(8, "big")) + _nla(2, octets.to_bytes(8, "big"))

    start, stop = 1796532003 * 10**9, 1796532006 * 10**9 + 896785000
    body = (
        _nla(1, orig, True)
        + _nla(3, (0x0E).to_bytes(4, "big"))  # CONFIRMED | ASSURED | SEEN_REPLY
        + _nla(4, _nla(1, _nla(1, bytes([state])), True), True)
        + _nla(8, (0x01000007).to_bytes(4, "big"))
        + _nla(9, counters(6, 398), True)
        + _nla(10, counters(6, 3388), True)
        + _nla(12, (3454568811).to_bytes(4, "big"))
        + _nla(20, _nla(1, start.to_bytes(8, "big")) + _nla(2, stop.to_bytes(8, "big")), True)
    )
    payload = bytes([2, 0, 0, 0]) + body  # nfgenmsg: AF_INET, version 0, res_id 0
    return struct.pack("=IHHII", 16 + len(payload), (1 << 8) | 2, 0, 0, 0) + payload


def test_netlink_destroy_messages_become_the_same_events() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    parsed = parse_messages(_destroy() + _destroy(proto=1) + _destroy(src=b"\1\2\3"), now)
    assert (len(parsed.events), parsed.unsupported, parsed.skipped) == (1, 1, 1)
    (event,) = parsed.events
    c, k = event.connection, event.counters
    assert (str(c.src), str(c.dst), c.sport, c.dport, c.state) == (
        "100.64.0.2",
        "10.1.0.10",
        54946,
        80,
        "TIME_WAIT",
    )
    assert k is not None and (k.bytes_out, k.bytes_in, k.mark, k.entry_id, k.assured) == (
        398,
        3388,
        0x01000007,
        3454568811,
        True,
    )
    assert event.at == AT and k.started == datetime.fromtimestamp(1796532003, UTC)
    record = forwarded_record(event, {}, Linger(tcp_time_wait=2))
    assert record is not None and record["policy_id"] == 7
    assert datetime.fromisoformat(record["end"]) - datetime.fromisoformat(record["start"]) == timedelta(
        seconds=1, microseconds=896000
    )
    assert parse_messages(b"\x10\0\0", now).skipped == 1  # truncated: skipped, no exception


def test_refused_listing_tolerates_strange_elements() -> None:
    def elem(val: Any, **extra: Any) -> dict[str, Any]:
        return {"elem": {"val": {"concat": val}, "expires": REFUSED_TIMEOUT - 5, **extra}}

    listing = json.dumps(
        {
            "nftables": [
                {"metainfo": {"version": "1.0.6"}},
                {
                    "set": {
                        "name": "refused",
                        "elem": [
                            elem(
                                ["100.64.0.2", "10.1.0.10", "tcp", 8080], counter={"packets": 3, "bytes": 180}
                            ),
                            elem(["100.64.0.2", "10.1.0.10", "icmp", 0]),
                            elem(["not an address", "10.1.0.10", "udp", 53]),
                            {"elem": "garbage"},
                        ],
                    }
                },
            ]
        }
    )
    now = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)
    records, bad = refused_records(listing, now, {"100.64.0.2": 4})
    assert bad == 3
    (r,) = records
    assert (r["device_id"], r["packets_out"], r["bytes_out"], r["port"]) == (4, 3, 180, 8080)
    assert datetime.fromisoformat(r["start"]) == now - timedelta(seconds=5)


class _Identity:
    """Only what FlowRecorder reads before its loop starts (no controller in these tests)."""


def _record(i: int) -> dict[str, Any]:
    return {"client": "100.64.0.2", "port": i}


def test_queue_is_bounded_and_counts_what_it_drops() -> None:
    rec = FlowRecorder(_Identity(), lambda: None, queue_size=5)  # type: ignore[arg-type]
    rec.offer([_record(i) for i in range(8)])
    assert (len(rec.queue), rec.dropped, rec.recorded) == (5, 3, 5)


def test_a_failed_post_keeps_the_batch_and_the_loss_counts_for_the_next() -> None:
    rec = FlowRecorder(_Identity(), lambda: None, queue_size=10)  # type: ignore[arg-type]
    rec.offer([_record(i) for i in range(12)])
    posted: list[dict[str, Any]] = []

    def down(path: str, body: Any) -> None:
        raise ControllerUnreachable("https://controller.test", "connection refused")

    assert rec.send(down) is False
    assert [r["port"] for r in rec.queue] == list(range(10)) and rec.dropped == 2

    def up(path: str, body: Any) -> None:
        posted.append(body)

    assert rec.send(up) is True
    assert [r["port"] for r in posted[0]["records"]] == list(range(10))
    assert posted[0]["dropped"] == 2 and rec.dropped == 0 and not rec.queue
