"""ss listener parsing, against output captured from the real tool (iproute2 6.1)
in a test namespace: every address form ss prints, with and without ``-p``."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.model.segment import Listener
from zerogate.netops import ss

# ss -H -tuln -p, as root
AS_ROOT = """\
udp UNCONN 0      0                 0.0.0.0:5353 0.0.0.0:* users:(("python3",pid=15791,fd=5))
udp UNCONN 0      0      [fd77::1]%zgslcapa:546     [::]:* users:(("python3",pid=17690,fd=5))
udp UNCONN 0      0                       *:547        *:* users:(("python3",pid=17690,fd=6))
tcp LISTEN 0      128         127.0.0.53%lo:53   0.0.0.0:* users:(("python3",pid=17690,fd=4))
tcp LISTEN 0      128             10.77.0.1:9090 0.0.0.0:* users:(("python3",pid=15791,fd=6))
tcp LISTEN 0      128                 [::1]:2224    [::]:* users:(("python3",pid=17690,fd=8))
tcp LISTEN 0      128    [::ffff:10.77.0.1]:2223       *:* users:(("python3",pid=17690,fd=7))
tcp LISTEN 0      128                     *:8080       *:* users:(("python3",pid=15791,fd=3))
tcp LISTEN 0      128                  [::]:2222    [::]:* users:(("python3",pid=17690,fd=3))
"""

# ss -H -tuln (what -p gives without root: no process column)
NO_ROOT = """\
udp UNCONN 0      0        0.0.0.0:5353 0.0.0.0:*
tcp LISTEN 0      128    10.77.0.1:9090 0.0.0.0:*
tcp LISTEN 0      128            *:8080       *:*
"""

# two processes on one socket, one renamed with prctl(PR_SET_NAME) to hold quotes
# (ss cuts the name at its first ")")
SHARED = """\
tcp LISTEN 0      128    0.0.0.0:4444 0.0.0.0:* users:(("we "ird"",pid=18294,fd=3),("my srv",pid=18223,fd=3))
"""


def test_argv() -> None:
    assert ss.listeners_argv() == ["ss", "-H", "-tuln", "-p"]


def test_every_address_form_parses() -> None:
    parsed = ss.parse_listeners(AS_ROOT)
    assert parsed.skipped == 0
    assert [(lst.protocol, lst.address, lst.port) for lst in parsed.listeners] == [
        ("udp", ip_address("0.0.0.0"), 5353),
        ("udp", ip_address("fd77::1"), 546),
        ("udp", None, 547),
        ("tcp", ip_address("127.0.0.53"), 53),
        ("tcp", ip_address("10.77.0.1"), 9090),
        ("tcp", ip_address("::1"), 2224),
        ("tcp", ip_address("::ffff:10.77.0.1"), 2223),
        ("tcp", None, 8080),
        ("tcp", ip_address("::"), 2222),
    ]
    assert {lst.process for lst in parsed.listeners} == {"python3"}


def test_without_root_the_process_is_unknown() -> None:
    parsed = ss.parse_listeners(NO_ROOT)
    assert parsed.listeners == (
        Listener("udp", ip_address("0.0.0.0"), 5353, None),
        Listener("tcp", ip_address("10.77.0.1"), 9090, None),
        Listener("tcp", None, 8080, None),
    )


def test_processes_sharing_a_socket_are_named_in_order() -> None:
    (listener,) = ss.parse_listeners(SHARED).listeners
    assert listener.process == 'my srv,we "ird"'


def test_many_processes_stay_within_the_name_bound() -> None:
    users = ",".join(f'("worker{i:02}",pid={100 + i},fd=3)' for i in range(20))
    (listener,) = ss.parse_listeners(f"tcp LISTEN 0 128 *:80 *:* users:({users})\n").listeners
    assert listener.process == "worker00,+19"


@pytest.mark.parametrize(
    "line",
    [
        "tcp ESTAB 0 0 10.0.0.1:22 10.0.0.2:5555",  # not a listener
        "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",  # no netid column
        "tcp LISTEN 0 128 0.0.0.0:0 0.0.0.0:*",
        "tcp LISTEN 0 128 0.0.0.0:65536 0.0.0.0:*",
        "tcp LISTEN 0 128 0.0.0.0 0.0.0.0:*",
        "tcp LISTEN 0 128 ::1:22 [::]:*",  # IPv6 without brackets
        "tcp LISTEN 0 128 [10.0.0.1]:22 0.0.0.0:*",
        "tcp LISTEN 0 128 10.0.0.1%:22 0.0.0.0:*",
        "tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((sshd,pid=1,fd=3))",
        'tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("ssh\x1bd",pid=1,fd=3))',
        "sctp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",
    ],
)
def test_lines_not_understood_are_counted_and_skipped(line: str) -> None:
    parsed = ss.parse_listeners(NO_ROOT + line + "\n")
    assert len(parsed.listeners) == 3 and parsed.skipped == 1


_PIECES = st.sampled_from(
    [
        "tcp",
        "udp",
        "LISTEN",
        "UNCONN",
        "0",
        "128",
        "*:80",
        "[::]:22",
        "0.0.0.0:*",
        "%lo",
        ":",
        "[",
        "]",
        'users:(("a",pid=1,fd=2))',
        'users:(("',
        '",pid=1,fd=2)',
        ",",
        ")",
        '"',
        "\x00",
    ]
)


@given(st.lists(st.one_of(_PIECES, st.text(max_size=10)), max_size=25), st.sampled_from([" ", ""]))
def test_parse_never_raises_on_arbitrary_lines(pieces: list[str], glue: str) -> None:
    text = glue.join(pieces)
    parsed = ss.parse_listeners(NO_ROOT + text)
    assert len(parsed.listeners) + parsed.skipped <= len((NO_ROOT + text).splitlines())
    assert parsed.listeners[:3] == ss.parse_listeners(NO_ROOT).listeners


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "users",
    ['("' + '",pid=1,fd=2),("' * 800 + "x", "(" + '("a",pid=1,fd=2)' * 900 + "X", '("' + '"' * 16000],
    ids=["unterminated", "unbalanced", "quotes"],
)
def test_hostile_process_columns_are_refused_quickly(users: str) -> None:
    parsed = ss.parse_listeners(f"tcp LISTEN 0 1 *:80 *:* users:({users})\n")
    assert parsed.listeners == () and parsed.skipped == 1
