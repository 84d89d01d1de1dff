"""Testbed slots: the lock record and address parsers, and crash recovery for real.

A topology owner killed without close(): its watchdog cleans the slot up; with
the watchdog gone too, the next holder of the slot sweeps the left-overs.
Runs as root (CI does), like test_topology.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from ipaddress import IPv4Interface
from pathlib import Path

from nstools import slot_is_free, slot_namespaces
from zerogate.netops import netns
from zerogate.testbed import Topology
from zerogate.testbed.lab import wait_for
from zerogate.testbed.slots import (
    _alive,
    _foreign_subnet_users,
    parse_lock_record,
    parse_root_addresses,
)
from zerogate.testbed.topology import Layout

SRC = str(Path(__file__).resolve().parents[2] / "src")


# -- parsers ------------------------------------------------------------------------------


def test_parsers_read_real_output_shapes() -> None:
    ip_addr = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "7: zgs-h@if17    inet 198.18.250.254/24 scope global zgs-h\\       valid_lft forever\n"
        "9: zg3host@if2    inet 198.18.3.254/24 scope global zg3host\\       valid_lft forever\n"
    )
    addresses = parse_root_addresses(ip_addr)
    assert addresses[1] == ("zgs-h", IPv4Interface("198.18.250.254/24"))
    assert _foreign_subnet_users(250, Layout(250).internet, addresses) == ["zgs-h"]
    # our own veth from a crashed run: not foreign
    assert _foreign_subnet_users(3, Layout(3).internet, addresses) == []
    assert parse_lock_record("pid=12\ntmp=/tmp/zerogate-testbed-3-x\n") == {
        "pid": "12",
        "tmp": "/tmp/zerogate-testbed-3-x",
    }


# -- crashes ----------------------------------------------------------------------------

CRASHING_OWNER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from zerogate.testbed import Topology
    t = Topology(clients=0, connectors=1).build()
    p = t.popen("app", ["sleep", "300"], log=t.tmp / "sleep.log")
    print(t.index, t.tmp, p.pid, t._watchdog.pid, flush=True)
    time.sleep(300)
    """
)


def start_crashing_owner() -> tuple[subprocess.Popen[str], int, Path, int, int]:
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER, SRC], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    k, tmp, sleeper, watchdog = owner.stdout.readline().split()
    return owner, int(k), Path(tmp), int(sleeper), int(watchdog)


def test_watchdog_cleans_up_when_the_owner_is_killed() -> None:
    owner, k, tmp, sleeper, _ = start_crashing_owner()
    assert slot_namespaces(k) and _alive(sleeper)
    owner.kill()  # SIGKILL: no atexit, no finally
    owner.wait()
    wait_for(
        lambda: not slot_namespaces(k) and not _alive(sleeper) and not tmp.exists(),
        10.0,
        "the watchdog's cleanup",
    )
    assert not netns.link_exists(None, f"zg{k}host")
    wait_for(lambda: slot_is_free(k), 10.0, "the watchdog to release the slot")


def test_leftovers_of_a_dead_owner_and_watchdog_are_removed_when_the_slot_is_reused() -> None:
    owner, k, tmp, sleeper, watchdog = start_crashing_owner()
    os.kill(watchdog, signal.SIGKILL)  # its watchdog is gone too: nothing cleans up
    owner.kill()
    owner.wait()
    wait_for(lambda: slot_is_free(k), 10.0, "the slot lock to be released")
    assert slot_namespaces(k) and _alive(sleeper) and tmp.exists()
    with Topology(clients=0, connectors=0, attacker=False) as first:
        if first.index != k:  # a lower slot was free (or another test run took k): take the next one
            with Topology(clients=0, connectors=0, attacker=False) as second:
                assert second.index == k or not slot_is_free(k)
        assert not _alive(sleeper)
        assert not tmp.exists()
