"""conntrack commands and parsers, against output captured from the real tool
(conntrack-tools 1.4.7, kernel 6.x, in a test namespace), and one real test:
two namespaces, real listeners and clients, the real conntrack and ss, parsed
and joined into exactly the flows the test generated (root only).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nstools import sh
from zerogate.model.segment import Address, Connection, Flow
from zerogate.netops import conntrack, ss
from zerogate.policy import segment

# conntrack -L -o extended (stderr's summary line appended, as if merged)
LISTING = """\
ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=53474 dport=9090 src=10.77.0.1 dst=10.77.0.2 sport=9090 dport=53474 [ASSURED] mark=0 use=1
ipv4     2 udp      17 29 src=10.77.0.2 dst=10.77.0.1 sport=51969 dport=5354 [UNREPLIED] src=10.77.0.1 dst=10.77.0.2 sport=5354 dport=51969 mark=0 use=1
ipv4     2 udp      17 29 src=10.77.0.2 dst=10.77.0.1 sport=51969 dport=5353 src=10.77.0.1 dst=10.77.0.2 sport=5353 dport=51969 mark=0 use=1
ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=59930 dport=8080 src=10.77.0.1 dst=10.77.0.2 sport=8080 dport=59930 [ASSURED] mark=0 use=1
ipv4     2 icmp     1 29 src=10.77.0.1 dst=10.77.0.2 type=8 code=0 id=15940 src=10.77.0.2 dst=10.77.0.1 type=0 code=0 id=15940 mark=0 use=1
ipv6     10 tcp      6 119 TIME_WAIT src=fd77::2 dst=fd77::1 sport=44968 dport=8080 src=fd77::1 dst=fd77::2 sport=8080 dport=44968 [ASSURED] mark=0 use=1
conntrack v1.4.7 (conntrack-tools): 6 flow entries have been shown.
"""

# timeout 3 conntrack -E -e NEW -o timestamp,extended
EVENTS = """\
[1796457758.548874]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.77.0.2 dst=10.77.0.1 sport=59940 dport=8080 [UNREPLIED] src=10.77.0.1 dst=10.77.0.2 sport=8080 dport=59940
[1796457758.548956]\t    [NEW] ipv6     10 tcp      6 120 SYN_SENT src=fd77::2 dst=fd77::1 sport=44972 dport=8080 [UNREPLIED] src=fd77::1 dst=fd77::2 sport=8080 dport=44972
[1796457758.548965]\t    [NEW] ipv6     10 udp      17 30 src=fd77::2 dst=fd77::1 sport=40307 dport=5353 [UNREPLIED] src=fd77::1 dst=fd77::2 sport=5353 dport=40307
[1796457758.548970]\t    [NEW] ipv4     2 udp      17 30 src=10.77.0.2 dst=10.77.0.1 sport=36105 dport=5353 [UNREPLIED] src=10.77.0.1 dst=10.77.0.2 sport=5353 dport=36105
"""

# conntrack -E -o timestamp,extended (all event kinds; the DESTROY after conntrack -D)
UPDATES = """\
[1796457761.460423]\t [UPDATE] ipv4     2 tcp      6 60 SYN_RECV src=10.77.0.2 dst=10.77.0.1 sport=49768 dport=9090 src=10.77.0.1 dst=10.77.0.2 sport=9090 dport=49768
[1796457761.460430]\t [UPDATE] ipv4     2 tcp      6 432000 ESTABLISHED src=10.77.0.2 dst=10.77.0.1 sport=49768 dport=9090 src=10.77.0.1 dst=10.77.0.2 sport=9090 dport=49768 [ASSURED]
[1796459339.854747]\t[DESTROY] ipv4     2 tcp      6 119 TIME_WAIT src=10.232.0.2 dst=10.232.0.1 sport=46186 dport=7000 src=10.232.0.1 dst=10.232.0.2 sport=7000 dport=46186 [ASSURED] [USERSPACE] portid=3969957854
"""


def test_argv_lists_and_bounds_the_event_stream() -> None:
    assert conntrack.list_argv() == ["conntrack", "-L", "-o", "extended"]
    assert conntrack.events_argv(5) == [
        "timeout",
        "5",
        "conntrack",
        "-E",
        "-e",
        "NEW",
        "-o",
        "timestamp,extended",
    ]
    for bad in (0, -1, 86401, True):
        with pytest.raises(ValueError, match="seconds"):
            conntrack.events_argv(bad)


def test_the_long_lived_stream_is_a_fixed_argv_without_timeout() -> None:
    assert conntrack.stream_argv() == ["conntrack", "-E", "-e", "NEW", "-o", "timestamp,extended"]


def test_lost_events_are_counted_and_the_tools_explanations_left_out() -> None:
    # conntrack -E's stderr merged into its stdout, as the segment server reads it
    warning = (
        "WARNING: We have hit ENOBUFS! We are losing events.\n"
        "This message means that the current netlink socket buffer size is too small.\n"
        "Please, check --buffer-size in conntrack(8) manpage.\n"
    )
    notice = "NOTICE: Netlink socket buffer size has been set to 425984 bytes.\n"
    summary = "conntrack v1.4.7 (conntrack-tools): 4 flow events have been shown.\n"
    parsed = conntrack.parse_events(notice + EVENTS + warning + warning + summary)
    assert (len(parsed.events), parsed.overflows, parsed.skipped) == (4, 2, 0)
    assert conntrack.parse_events(EVENTS).overflows == 0


def test_learning_table_replaces_only_its_own_table() -> None:
    script = conntrack.learning_table()
    assert script.startswith("table inet zerogate_learn {}\ndelete table inet zerogate_learn\n")
    assert "ct state new" in script and "policy accept" in script
    assert "flush ruleset" not in script and "drop" not in script
    assert conntrack.unload_learning_argv() == ["nft", "delete", "table", "inet", "zerogate_learn"]


def test_listing_parses_tcp_and_udp_of_both_families() -> None:
    parsed = conntrack.parse_entries(LISTING)
    v4, peer = ip_address("10.77.0.1"), ip_address("10.77.0.2")
    assert parsed.connections == (
        Connection("tcp", peer, v4, 53474, 9090, "TIME_WAIT", True),
        Connection("udp", peer, v4, 51969, 5354, None, False),
        Connection("udp", peer, v4, 51969, 5353, None, True),
        Connection("tcp", peer, v4, 59930, 8080, "TIME_WAIT", True),
        Connection("tcp", ip_address("fd77::2"), ip_address("fd77::1"), 44968, 8080, "TIME_WAIT", True),
    )
    assert (parsed.skipped, parsed.unsupported) == (0, 1)  # the ICMP entry


def test_events_parse_with_their_time_and_kind() -> None:
    parsed = conntrack.parse_events(EVENTS + UPDATES)
    assert parsed.skipped == 0 and len(parsed.events) == 7
    first = parsed.events[0]
    assert first.at == datetime(2026, 12, 5, 8, 2, 38, 548874, tzinfo=UTC)
    assert first.kind == "NEW"
    assert first.connection == Connection(
        "tcp", ip_address("10.77.0.2"), ip_address("10.77.0.1"), 59940, 8080, "SYN_SENT", False
    )
    assert parsed.events[2].connection.protocol == "udp" and parsed.events[2].connection.state is None
    assert [e.kind for e in parsed.events[4:]] == ["UPDATE", "UPDATE", "DESTROY"]
    assert parsed.events[5].connection.replied


@pytest.mark.parametrize(
    "line",
    [
        "ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=53474 dport=9090",  # one tuple
        "ipv4     10 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=1 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",
        "ipv4     2 tcp      17 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=1 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",
        "ipv4     2 tcp      6 119 TIME_WAIT src=fd77::2 dst=10.77.0.1 sport=1 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",
        "ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=0 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=0",
        "ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=1 dport=70000 src=10.77.0.1 dst=10.77.0.2 sport=70000 dport=1",
        "ipv4     2 tcp      6 119 TIME_WAIT src=10.77.0.2 dst=10.77.0.1 sport=+1 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",
        "ipv4     2 tcp      6 119 src=10.77.0.2 dst=10.77.0.1 sport=1 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",  # no state
        "ipv6     10 udp      17 29 src=fe80::1%eth0 dst=fd77::1 sport=1 dport=2 src=fd77::1 dst=fe80::1 sport=2 dport=1",
        "ipv4     2 udp      17 29 src=10.77.0.2 dst=10.77.0.1 sport=\u0661 dport=2 src=10.77.0.1 dst=10.77.0.2 sport=2 dport=1",
        "some banner the tool never printed",
    ],
)
def test_lines_not_trusted_are_counted_and_skipped(line: str) -> None:
    parsed = conntrack.parse_entries(LISTING.splitlines()[0] + "\n" + line + "\n")
    assert len(parsed.connections) == 1 and parsed.skipped == 1


def test_event_lines_without_time_or_kind_are_skipped() -> None:
    line = EVENTS.splitlines()[0]
    broken = [
        line.split("\t", 1)[1],  # no timestamp
        line.replace("[NEW]", "[NEWX"),
        line.replace("[NEW]", "[OLD]"),
        line.replace("[1796457758.548874]", "[nan]"),
        line.replace("[1796457758.548874]", "[999999999999.1]"),  # past datetime's range
    ]
    parsed = conntrack.parse_events("\n".join([line, *broken]))
    assert len(parsed.events) == 1 and parsed.skipped == len(broken)


_TOKENS = st.sampled_from(
    [
        "ipv4",
        "ipv6",
        "2",
        "10",
        "tcp",
        "udp",
        "6",
        "17",
        "119",
        "ESTABLISHED",
        "[UNREPLIED]",
        "[NEW]",
        "src=10.0.0.1",
        "dst=10.0.0.2",
        "src=::1",
        "sport=1",
        "dport=65535",
        "dport=0",
        "=",
        "[",
        "]",
        "[1796457758.548874]",
        "[1.]",
        "src=",
        "%",
        "\x00",
        "\u0661",
    ]
)


@given(st.lists(st.one_of(_TOKENS, st.text(max_size=12)), max_size=30))
def test_parsers_never_raise_on_arbitrary_lines(tokens: list[str]) -> None:
    line = " ".join(tokens)
    for text in (line, LISTING + line, "[1796457758.1] [NEW] " + line):
        entries = conntrack.parse_entries(text)
        events = conntrack.parse_events(text)
        assert len(entries.connections) + entries.skipped + entries.unsupported <= len(text.splitlines())
        assert len(events.events) + events.skipped + events.unsupported <= len(text.splitlines())


# --------------------------------------------------------------------------- real: namespaces


SERVER = """
import ctypes, socket, sys, threading
ctypes.CDLL(None).prctl(15, b"zgsl-echo", 0, 0, 0)  # PR_SET_NAME: the name ss reports
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # dual-stack: ss shows "*"
tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
tcp.bind(("::", 8080))
tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # IPv4 only: "0.0.0.0"
udp.bind(("0.0.0.0", 5353))

def serve_tcp():
    while True:
        c, _ = tcp.accept()
        c.sendall(b"ok")
        c.close()

def serve_udp():
    while True:
        data, peer = udp.recvfrom(64)
        udp.sendto(data, peer)

threading.Thread(target=serve_tcp, daemon=True).start()
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENTS = """
import socket
def tcp(dst, src=None):
    c = socket.create_connection((dst, 8080), timeout=5, source_address=(src, 0) if src else None)
    assert c.recv(8) == b"ok"
    c.close()
tcp("10.231.0.1")
tcp("10.231.0.1")
tcp("10.231.0.1", "10.231.0.3")
tcp("fd00:5a::1")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"hi", ("10.231.0.1", 5353))
assert u.recvfrom(8)[0] == b"hi"
u.sendto(b"hi", ("10.231.0.1", 5354))  # nothing listens there: tracked, but no flow
"""

PEER4, PEER4B, PEER6 = ip_address("10.231.0.2"), ip_address("10.231.0.3"), ip_address("fd00:5a::2")
# (protocol, port, peer, process) -> count: exactly what CLIENTS does
EXPECTED = {
    ("tcp", 8080, PEER4, "zgsl-echo"): 2,
    ("tcp", 8080, PEER4B, "zgsl-echo"): 1,
    ("tcp", 8080, PEER6, "zgsl-echo"): 1,
    ("udp", 5353, PEER4, "zgsl-echo"): 1,
}


class LearningPair:
    """Namespaces ``zgslh…`` (the asset) and ``zgslp…`` (its clients) over a veth
    pair, the asset's listeners and its learning table; ``close`` removes all."""

    def __init__(self, tmp_path: Path) -> None:
        suffix = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.host, self.peer = f"zgslh{suffix}", f"zgslp{suffix}"
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[str]] = []

    def open(self) -> None:
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.peer)
        veth = ["ip", "link", "add", self.host, "netns", self.host, "type", "veth"]
        sh(*veth, "peer", "name", self.peer, "netns", self.peer)
        for ns, dev, addresses in (
            (self.host, self.host, ("10.231.0.1/24", "fd00:5a::1/64")),
            (self.peer, self.peer, ("10.231.0.2/24", "10.231.0.3/24", "fd00:5a::2/64")),
        ):
            for address in addresses:
                nodad = ["nodad"] if ":" in address else []  # no duplicate detection delay
                sh("ip", "-n", ns, "addr", "add", address, "dev", dev, *nodad)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self.in_host("nft", "-f", "-", input=conntrack.learning_table())
        server = self.tmp_path / "server.py"
        server.write_text(SERVER)
        proc = self.spawn(self.host, sys.executable, str(server))
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.processes.append(proc)
        return proc

    def in_host(self, *argv: str, input: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.host, *argv, input=input).stdout

    def local_addresses(self) -> list[Address]:
        links = json.loads(sh("ip", "-j", "-n", self.host, "addr", "show").stdout)
        return [ip_address(a["local"]) for link in links for a in link.get("addr_info", [])]

    def events_subscribed(self) -> bool:
        """Whether a netfilter netlink socket (protocol 12) listens to multicast groups."""
        rows = [line.split() for line in self.in_host("cat", "/proc/net/netlink").splitlines()[1:]]
        return any(row[1] == "12" and int(row[3], 16) != 0 for row in rows)

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()  # timeout(1) passes TERM on to conntrack; KILL would orphan it
                try:
                    proc.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
            proc.communicate(timeout=10)
        for ns in (self.host, self.peer):
            sh("ip", "netns", "del", ns, check=False)  # takes the veth pair with it


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[LearningPair]:
    made = LearningPair(tmp_path)
    try:
        made.open()
        yield made
    finally:
        made.close()


def identities(flows: tuple[Flow, ...]) -> dict[tuple[str, int, Address, str | None], int]:
    merged = segment.merge([], flows).flows
    return {(f.protocol, f.port, f.peer, f.process): f.count for f in merged}


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("conntrack", "ss", "nft", "ip", "timeout")),
    reason="needs root, conntrack, iproute2 and nftables",
)
def test_real_conntrack_and_ss_give_exactly_the_generated_flows(pair: LearningPair) -> None:
    capture = pair.spawn(pair.host, *conntrack.events_argv(4))
    deadline = time.monotonic() + 5
    while not pair.events_subscribed():
        assert time.monotonic() < deadline, "conntrack -E did not subscribe to events"
        time.sleep(0.05)
    clients = pair.tmp_path / "clients.py"
    clients.write_text(CLIENTS)
    sh("ip", "netns", "exec", pair.peer, sys.executable, str(clients))
    events_out, events_err = capture.communicate(timeout=20)
    assert capture.returncode == 124, events_err  # timeout ended it: the normal end

    listeners = ss.parse_listeners(pair.in_host(*ss.listeners_argv()))
    entries = conntrack.parse_entries(pair.in_host(*conntrack.list_argv()))
    events = conntrack.parse_events(events_out)
    local = pair.local_addresses()
    assert listeners.skipped == entries.skipped == events.skipped == 0
    assert {(lst.protocol, lst.address, lst.port, lst.process) for lst in listeners.listeners} == {
        ("tcp", None, 8080, "zgsl-echo"),
        ("udp", ip_address("0.0.0.0"), 5353, "zgsl-echo"),
    }
    unanswered = [c for c in entries.connections if c.dport == 5354]
    assert len(unanswered) == 1 and not unanswered[0].replied and unanswered[0].src == PEER4

    snapshot = segment.derive_flows(entries.connections, listeners.listeners, local, at=datetime.now(UTC))
    assert identities(snapshot) == EXPECTED
    timed = [(e.at, e.connection) for e in events.events if e.kind == "NEW"]
    from_events = segment.derive_timed_flows(timed, listeners.listeners, local)
    assert identities(from_events) == EXPECTED

    proposal = segment.propose(from_events, {}, max_rules=10)
    assert [(r.protocol, r.ports) for r in proposal.rules] == [("tcp", "8080"), ("udp", "5353")]
    assert segment.simulate(snapshot, proposal.rules).blocks_nothing
