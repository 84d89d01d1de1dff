"""ICMP echo probing: the checksum and packet codec (pure), then a Prober in one
network namespace answered by the kernel of another, over a veth pair.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

import pytest

from nstools import Netns
from zerogate.netops.icmp import ECHO_REPLY, ECHO_REQUEST, Prober, checksum, echo_request, parse_reply

# --------------------------------------------------------------------------- pure


def test_checksum_known_vectors() -> None:
    # RFC 1071, section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # the IPv4 header example used in most textbooks (192.168.0.1 -> 192.168.0.199)
    assert checksum(bytes.fromhex("450000730000400040110000c0a80001c0a800c7")) == 0xB861
    assert checksum(b"") == 0xFFFF
    assert checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte
    assert checksum(b"\xff\xff\x00\x01") == 0xFFFE  # the end-around carry is folded back in


def test_a_packet_with_its_checksum_in_place_sums_to_zero() -> None:
    for payload in (b"", b"x", b"zerogate-probe", bytes(range(256))):
        assert checksum(echo_request(0xBEEF, 7, payload)) == 0


def test_echo_request_layout() -> None:
    packet = echo_request(0x1234, 0xABCD, b"hi!")
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (kind, code, ident, seq, packet[8:]) == (ECHO_REQUEST, 0, 0x1234, 0xABCD, b"hi!")


def as_reply(request: bytes, ihl_words: int = 5) -> bytes:
    """What a kernel sends back: an IPv4 header (with ``ihl_words`` 32-bit words) and the echo as a reply."""
    icmp = bytes([ECHO_REPLY, 0, 0, 0]) + request[4:]
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    options = b"\x01" * (4 * (ihl_words - 5))  # NOP options
    total = 4 * ihl_words + len(icmp)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0, total, 1, 0, 64, 1, 0, bytes(4), bytes(4))
    return header + options + icmp


def test_parse_reply_round_trip() -> None:
    request = echo_request(0x4242, 300)
    assert parse_reply(as_reply(request), 0x4242) == 300
    assert parse_reply(as_reply(request, ihl_words=7), 0x4242) == 300  # IP options are skipped


def test_parse_reply_ignores_what_is_not_our_reply() -> None:
    request = echo_request(0x4242, 300)
    assert parse_reply(as_reply(request), 0x4243) is None  # someone else's ping
    ip_header = as_reply(request)[:20]
    assert parse_reply(ip_header + request, 0x4242) is None  # a request, not a reply
    assert parse_reply(as_reply(request)[:27], 0x4242) is None  # too short


def test_parse_reply_of_a_truncated_datagram_with_ip_options_is_none() -> None:
    # 24-byte header (one option word) + 4 ICMP bytes: 28 bytes, passes the length check
    truncated = as_reply(echo_request(1, 1), ihl_words=6)[:28]
    assert parse_reply(truncated, 1) is None


# --------------------------------------------------------------------------- real probes


@pytest.fixture
def pair(make_netns: Callable[[str], Netns]) -> tuple[Netns, Netns]:
    """Prober side 10.77.0.1 and .3 ── veth ── 10.77.0.2 answering side."""
    if os.geteuid() != 0:
        pytest.skip("needs root (raw sockets, network namespaces)")
    a, b = make_netns("pa"), make_netns("pb")
    a.ip("link", "add", "p0", "type", "veth", "peer", "name", "p0", "netns", b.name)
    a.ip("addr", "add", "10.77.0.1/24", "dev", "p0")
    a.ip("addr", "add", "10.77.0.3/24", "dev", "p0")
    b.ip("addr", "add", "10.77.0.2/24", "dev", "p0")
    a.ip("link", "set", "p0", "up")
    b.ip("link", "set", "p0", "up")
    return a, b


def probe_until(prober: Prober, targets: list[str], done: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not done() and time.monotonic() < deadline:
        prober.send(targets)
        prober.receive(0.2)


def test_prober_sees_the_kernel_of_a_peer_answer(pair: tuple[Netns, Netns]) -> None:
    a, _ = pair
    prober = a.call(Prober)
    try:
        # .2 answers; .9 is on the link but nobody has it; 10.88.0.1 has no route at all
        targets = ["10.77.0.2", "10.77.0.9", "10.88.0.1"]
        probe_until(prober, targets, lambda: prober.alive("10.77.0.2", 1.0))
        assert prober.alive("10.77.0.2", 1.0)
        assert 0 < prober.rtt_ms["10.77.0.2"] < 1000
        assert not prober.alive("10.77.0.9", 1.0)
        assert not prober.alive("10.88.0.1", 1.0)
        assert "10.88.0.1" not in prober.sent_at  # sendto failed: no route, no error either
        time.sleep(0.3)
        assert not prober.alive("10.77.0.2", 0.2)  # answers age out
    finally:
        prober.close()


def test_a_peer_that_goes_away_stops_being_alive(pair: tuple[Netns, Netns]) -> None:
    a, b = pair
    prober = a.call(lambda: Prober(source="10.77.0.3"))
    try:
        probe_until(prober, ["10.77.0.2"], lambda: prober.alive("10.77.0.2", 1.0))
        assert prober.alive("10.77.0.2", 1.0)
        b.ip("link", "set", "p0", "down")
        started = time.monotonic()
        probe_until(prober, ["10.77.0.2"], lambda: not prober.alive("10.77.0.2", 0.5), limit=3.0)
        assert not prober.alive("10.77.0.2", 0.5)
        assert time.monotonic() - started < 1.5
    finally:
        prober.close()
