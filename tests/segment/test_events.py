"""Learning from conntrack events (no namespaces here): the ledger that counts each
connection once across events and snapshots and bounds what it keeps, the session
that restarts with back-off and stops cleanly, and the script the host runs (its
table loaded before the stream starts, the stream stopped with the session). The
real thing against an sshd host is in test_hosts.py."""

from __future__ import annotations

import os
import shlex
import time
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from zerogate.model.segment import Connection, Listener
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.conntrack import ConntrackEvent, ConntrackEvents, learning_table, stream_argv
from zerogate.segment.events import STREAM_SCRIPT, EventLedger, EventStream, flows_of, session_argv
from zerogate.segment.ssh import CONNTRACK, NFT, PRIVILEGED, Access
from zerogate.testbed.lab import wait_for

HOST, CLIENT, FAR = ip_address("10.99.0.2"), ip_address("10.99.254.1"), ip_address("192.0.2.80")
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
LINE = (
    "[1796457758.548874]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.99.254.1 dst=10.99.0.2 "
    "sport={sport} dport=8080 [UNREPLIED] src=10.99.0.2 dst=10.99.254.1 sport=8080 dport={sport}"
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHLXlK7fGo4AzecNTPiaw7sE5YKflNkhPHdUOqxwxVqt"


def conn(sport: int, state: str | None = "ESTABLISHED", src: Any = CLIENT, dst: Any = HOST) -> Connection:
    return Connection("tcp", src, dst, sport, 8080 if dst == HOST else 443, state, True)


def events(*connections: Connection, overflows: int = 0) -> ConntrackEvents:
    return ConntrackEvents(tuple(ConntrackEvent(T0, "NEW", c) for c in connections), overflows=overflows)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- the ledger


def test_a_connection_seen_by_its_event_and_the_snapshot_counts_once() -> None:
    ledger = EventLedger()
    ledger.add(events(conn(1000), conn(1001)), at(1))  # 1001 ends before the snapshot
    ledger.add(events(conn(1000)), at(2))  # the same connection announced again: nothing new
    got = {
        o.connection.sport: (o.first_seen, o.last_seen) for o in ledger.take([conn(1000), conn(1002)], at(60))
    }
    assert got == {1000: (at(1), at(60)), 1001: (at(1), at(1)), 1002: (at(60), at(60))}
    assert ledger.received == 3 and ledger.pending == 0


def test_late_events_and_ended_connections_are_not_counted_again() -> None:
    ledger = EventLedger()
    ledger.add(events(conn(1000)), at(1))
    ledger.take([conn(1000), conn(1001)], at(60))
    ledger.add(events(conn(1001)), at(61))  # its event came after the snapshot that had it
    closing, still_open = conn(1000, "TIME_WAIT"), conn(1001)
    got = ledger.take([closing, still_open], at(120))
    # the ended connection's TIME_WAIT entry is its tail; an open one counts again (last_seen stays fresh)
    assert [(o.connection.sport, o.first_seen) for o in got] == [(1001, at(120))]


def test_pending_connections_are_capped_and_the_refused_ones_counted() -> None:
    ledger = EventLedger(cap=2)
    ledger.add(events(conn(1000), conn(1001), conn(1002), conn(1000), overflows=1), at(1))
    ledger.add(events(conn(1003), overflows=2), at(2))
    assert (ledger.pending, ledger.dropped, ledger.overflows, ledger.received) == (2, 2, 3, 5)
    assert len(ledger.take([], at(60))) == 2
    ledger.add(events(conn(1004)), at(61))  # room again after the snapshot
    assert (ledger.pending, ledger.dropped) == (1, 2)
    with pytest.raises(ValueError, match="at least 1"):
        EventLedger(cap=0)


def test_observations_become_flows_with_their_times_and_outbound_on_request() -> None:
    ledger = EventLedger()
    ledger.add(events(conn(1000), conn(1001, src=HOST, dst=FAR)), at(1))
    observed = ledger.take([conn(1000)], at(60))
    sockets = [Listener("tcp", None, 8080, "nginx")]
    inbound = flows_of(observed, sockets, [HOST])
    assert [(f.direction, f.port, f.peer, f.process, f.first_seen, f.last_seen) for f in inbound] == [
        ("inbound", 8080, CLIENT, "nginx", at(1), at(60))
    ]
    both = flows_of(observed, sockets, [HOST], outbound=True)
    assert {(f.direction, f.port, f.peer) for f in both} == {
        ("inbound", 8080, CLIENT),
        ("outbound", 443, FAR),
    }


# --------------------------------------------------------------------------- the session


class Sink:
    def __init__(self) -> None:
        self.batches: list[ConntrackEvents] = []

    def __call__(self, parsed: ConntrackEvents, when: datetime) -> None:
        self.batches.append(parsed)

    @property
    def events(self) -> int:
        return sum(len(b.events) for b in self.batches)


def test_a_session_that_ends_is_started_again_with_back_off() -> None:
    sink = Sink()
    script = f"printf '%s\\n' '{LINE.format(sport=40000)}'; echo 'sudo: a password is required'; exit 1"
    stream = EventStream("h", lambda: ["sh", "-c", script], sink, backoff_first=0.05, backoff_max=0.2)
    stream.start()
    try:
        wait_for(lambda: stream.sessions >= 3 and sink.events >= 3, 20, "three sessions")
    finally:
        stream.stop()
    assert not stream.running and not stream.gave_up
    assert stream.last_error.startswith("exit 1") and "password is required" in stream.last_error


def test_a_changed_host_key_ends_the_stream_for_good() -> None:
    script = "echo 'Host key verification failed.' >&2; exit 255"
    stream = EventStream("h", lambda: ["sh", "-c", script], Sink(), backoff_first=0.05)
    stream.start()
    wait_for(lambda: not stream.running, 20, "the stream to give up")
    assert stream.gave_up and stream.sessions == 1


def test_the_host_script_loads_the_table_first_and_stops_conntrack_with_the_session(tmp_path: Path) -> None:
    loaded, pidfile = tmp_path / "table.nft", tmp_path / "ct.pid"
    fake_nft = tmp_path / "nft"
    fake_nft.write_text(f'#!/bin/sh\n[ "$*" = "-f -" ] && cat > {loaded}\n')
    fake_ct = tmp_path / "conntrack"  # announces one connection only if the table is there
    fake_ct.write_text(
        f'#!/bin/sh\n[ "$*" = "{" ".join(stream_argv()[1:])}" ] || exit 9\necho $$ > {pidfile}\n'
        f"[ -s {loaded} ] && printf '%s\\n' '{LINE.format(sport=40001)}'\nexec sleep 60\n"
    )
    for path in (fake_nft, fake_ct):
        path.chmod(0o755)
    argv = ["sh", "-c", STREAM_SCRIPT, "zerogate-events", "0", str(fake_nft), str(fake_ct), learning_table(),
            *stream_argv()[1:]]  # fmt: skip
    sink = Sink()
    stream = EventStream("h", lambda: argv, sink)
    stream.start()
    try:
        wait_for(lambda: sink.events == 1, 20, "the event")
        assert loaded.read_text() == learning_table()
        pid = int(pidfile.read_text())
        began = time.monotonic()
    finally:
        stream.stop()
    assert time.monotonic() - began < 4 and not stream.running  # stdin closed: no terminate needed
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), 10, "conntrack to stop")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_ssh_session_is_its_own_connection_running_exactly_what_sudoers_grants(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("key")
    data: dict[str, Any] = {
        "asset_id": 7, "name": "db1", "address": "192.0.2.10", "ssh_port": 22, "ssh_user": "zgseg",
        "host_key": KEY, "mode": "learning", "rules_revision": 1, "rules": [], "jump_hosts": [],
    }  # fmt: skip
    argv = session_argv(SegmentAsset.model_validate(data), Access(tmp_path / "id", tmp_path / "state"))
    assert "ControlPath=none" in argv and "StrictHostKeyChecking=yes" in argv
    remote = shlex.split(argv[-1])
    at_script = remote.index(STREAM_SCRIPT)
    assert remote[:at_script] == ["env", "LC_ALL=C", "sh", "-c"]
    args = remote[at_script + 2 :]
    assert args[:4] == ["1", NFT, CONNTRACK, learning_table()]
    assert (CONNTRACK, *args[4:]) in PRIVILEGED and (NFT, "-f", "-") in PRIVILEGED
