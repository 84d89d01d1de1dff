"""Just-in-time openings on a real protected host: the rendered sets (golden, ``nft -c``),
then an :class:`~zerogate.testbed.sshhosts.SshFleet` host with sshd, nftables and two TCP
services, two client namespaces, and the server's own code
(:func:`~zerogate.segment.hosts.enforce`, :mod:`zerogate.segment.jit`) run in the
server namespace.

An opening must let exactly its source reach exactly its port, close by itself at its
kernel timeout with no server process around, and close at once when revoked.
Regenerate the golden file with ``ZEROGATE_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nstools import Netns
from zerogate.model.snapshot import JitOpening, SegmentAsset
from zerogate.segment import hosts
from zerogate.segment.checks import tcp_connects
from zerogate.segment.jit import (
    JitKeeper,
    apply_changes,
    change_script,
    key_of,
    list_elements,
    parse_elements,
)
from zerogate.segment.plan import render_asset_table
from zerogate.segment.ssh import Access
from zerogate.testbed.lab import wait_for
from zerogate.testbed.sshhosts import (
    SERVER_ADDRESS,
    SshFleet,
    SshHost,
    call_in_netns,
    client_address,
    tcp_services,
)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("ZEROGATE_UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
OPEN, OTHER = 8080, 9090  # the opening names OPEN; nothing names OTHER

needs_hosts = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(shutil.which(t) for t in ("ip", "nft", "ssh", "ssh-keyscan", "setsid"))
    or not Path("/usr/sbin/sshd").exists(),
    reason="needs root, iproute2, nftables and openssh (client and server)",
)


def opening(
    i: int, source: str, port: int, seconds: float, proto: str = "tcp", now: datetime = NOW
) -> JitOpening:
    return JitOpening.model_validate(
        {"opening_id": i, "source": source, "protocol": proto, "port": port,
         "expires_at": (now + timedelta(seconds=seconds)).isoformat()}
    )  # fmt: skip


def table_asset(**fields: Any) -> SegmentAsset:
    data: dict[str, Any] = {
        "asset_id": 4, "name": "web1", "address": "10.99.0.2", "ssh_port": 22, "ssh_user": "root",
        "host_key": None, "mode": "protected", "rules_revision": 12, "rules": [], "jump_hosts": [],
    }  # fmt: skip
    data.update(fields)
    return SegmentAsset.model_validate(data)


OPENINGS = [
    opening(1, "10.99.254.1", 22, 3600),
    opening(2, "10.99.254.1", 22, 59.2),  # same element, earlier expiry: the later one wins
    opening(3, "fd99:254::7", 5432, 0.4),  # rounded up to 1 s
    opening(4, "10.99.254.2", 53, 14400, proto="udp"),
    opening(5, "10.99.254.3", 3389, -1),  # expired: not rendered
]


def test_golden_protected_with_openings() -> None:
    text = render_asset_table(
        table_asset(jit_openings=OPENINGS), [ipaddress.ip_address("10.99.0.1")], [22], NOW
    )
    assert text is not None
    path = GOLDEN / "protected_jit.nft"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs; regenerate with ZEROGATE_UPDATE_GOLDEN=1"
    assert "10.99.254.1 . tcp . 22 timeout 3600s" in text and "fd99:254::7 . tcp . 5432 timeout 1s" in text
    assert "10.99.254.2 . udp . 53 timeout 14400s" in text
    assert "3389" not in text and "59s" not in text


def test_learning_with_blocks_has_no_jit_sets() -> None:
    text = render_asset_table(
        table_asset(mode="learning_with_blocks", jit_openings=OPENINGS),
        [ipaddress.ip_address("10.99.0.1")],
        [22],
    )
    assert text is not None and "jit" not in text


def test_change_script_is_safe_for_missing_and_present_elements() -> None:
    script = change_script([OPENINGS[0]], [key_of(OPENINGS[3])], NOW)
    assert script.splitlines() == [
        "add element inet zerogate_segment jit4 { 10.99.254.1 . tcp . 22 timeout 1s }",
        "delete element inet zerogate_segment jit4 { 10.99.254.1 . tcp . 22 }",
        "add element inet zerogate_segment jit4 { 10.99.254.1 . tcp . 22 timeout 3600s }",
        "add element inet zerogate_segment jit4 { 10.99.254.2 . udp . 53 timeout 1s }",
        "delete element inet zerogate_segment jit4 { 10.99.254.2 . udp . 53 }",
    ]
    expired = change_script([OPENINGS[4]], [], NOW)  # an expired one is removed, never set
    assert "timeout 1s" in expired and "delete element" in expired and expired.count("add") == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables")
def test_nft_accepts_the_rendering_and_the_changes(make_netns: Callable[[str], Netns]) -> None:
    ns = make_netns("j2")
    bare = render_asset_table(table_asset(), [ipaddress.ip_address("10.99.0.1")], [22], NOW)
    full = render_asset_table(
        table_asset(jit_openings=OPENINGS), [ipaddress.ip_address("10.99.0.1")], [22], NOW
    )
    assert bare is not None and full is not None
    ns.run("nft", "-c", "-f", "-", input=full)
    ns.run("nft", "-f", "-", input=bare)
    # set twice (present the second time) and remove twice (missing the second time): no error
    for _ in range(2):
        ns.run("nft", "-f", "-", input=change_script(OPENINGS[:1], [key_of(OPENINGS[3])], NOW))
    listing = ns.run("nft", "list", "table", "inet", "zerogate_segment").stdout
    assert parse_elements(listing) == {("jit4", "10.99.254.1 . tcp . 22")}
    for _ in range(2):
        ns.run("nft", "-f", "-", input=change_script([], [key_of(OPENINGS[0])], NOW))
    assert parse_elements(ns.run("nft", "list", "table", "inet", "zerogate_segment").stdout) == set()


# --------------------------------------------------------------------------- a real host


@pytest.fixture
def served(fleet: SshFleet) -> Iterator[SshHost]:
    """The host with a TCP service on OPEN and OTHER (stopped by PID)."""
    with tcp_services(fleet.hosts[0], (OPEN, OTHER)) as host:
        yield host


@needs_hosts
def test_an_opening_is_exactly_that_narrow_closes_by_itself_and_when_revoked(
    fleet: SshFleet, served: SshHost, tmp_path: Path
) -> None:
    host = served
    access = Access(fleet.key, tmp_path / "state", remote_dir=str(tmp_path / "on-host"))
    asset = host.asset(mode="protected", rules_revision=2)

    def reaches(client: int, port: int) -> bool:
        return call_in_netns(fleet.client_ns(client), lambda: tcp_connects(host.address, port, 0.5))

    done = fleet.call(lambda: hosts.enforce(asset, access, [SERVER_ADDRESS]))
    assert done.outcome == "applied", done.detail
    assert not reaches(0, OPEN) and not reaches(1, OPEN)

    # granted: client 0 -> OPEN only
    now = datetime.now(UTC)
    granted = opening(11, str(client_address(0)), OPEN, 600, now=now)
    keeper = JitKeeper(access)
    keeper.update([asset])
    fleet.call(lambda: keeper.grant(asset, granted))
    assert reaches(0, OPEN)
    assert not reaches(0, OTHER)  # another port of the same host
    assert not reaches(1, OPEN)  # another source
    assert fleet.call(lambda: list_elements(asset, access)) == {key_of(granted)}

    # a re-enforcement (new revision) carries the snapshot's openings with their remaining time
    listed = asset.model_copy(update={"rules_revision": 3, "jit_openings": (granted,)})
    done = fleet.call(lambda: hosts.enforce(listed, access, [SERVER_ADDRESS]))
    assert done.outcome == "applied", done.detail
    assert reaches(0, OPEN) and not reaches(1, OPEN)
    keeper.reloaded(listed.asset_id)

    # revoked: it leaves the snapshot, the keeper deletes it at once
    keeper.update([listed.model_copy(update={"jit_openings": ()})])
    keeper.granted.clear()  # the grant grace would keep it a while; the snapshot has spoken
    assert fleet.call(lambda: keeper.sync(keeper.assets[listed.asset_id]))
    assert not reaches(0, OPEN)
    assert fleet.call(lambda: list_elements(asset, access)) == set()

    # a 3 s opening, then no server code at all: the kernel closes it
    short = opening(12, str(client_address(1)), OTHER, 3, now=datetime.now(UTC))
    fleet.call(lambda: apply_changes(asset, access, [short]))
    assert reaches(1, OTHER) and not reaches(0, OTHER)
    waited = wait_for(lambda: not reaches(1, OTHER), 8, "the 3 s opening to close by itself")
    assert waited < 8
    assert parse_elements(fleet.nft(host, "list", "table", "inet", "zerogate_segment").stdout) == set()


@needs_hosts
def test_first_sync_removes_an_opening_revoked_while_the_server_was_down(
    fleet: SshFleet, served: SshHost, tmp_path: Path
) -> None:
    host = served
    access = Access(fleet.key, tmp_path / "state", remote_dir=str(tmp_path / "on-host"))
    now = datetime.now(UTC)
    kept = opening(21, str(client_address(0)), OPEN, 600, now=now)
    revoked = opening(22, str(client_address(1)), OPEN, 600, now=now)
    asset = host.asset(mode="protected", rules_revision=2, jit_openings=[kept, revoked])
    done = fleet.call(lambda: hosts.enforce(asset, access, [SERVER_ADDRESS]))
    assert done.outcome == "applied", done.detail
    assert reaches_all(fleet, host, OPEN) == [True, True]

    keeper = JitKeeper(access)  # a server that starts again: it knows nothing of the host yet
    keeper.update([asset.model_copy(update={"jit_openings": (kept,)})])
    fleet.call(keeper.sync_all)
    assert reaches_all(fleet, host, OPEN) == [True, True]  # not before the daemon says the table is loaded
    keeper.reloaded(asset.asset_id)
    fleet.call(keeper.sync_all)
    assert reaches_all(fleet, host, OPEN) == [True, False]
    assert keeper.applied[asset.asset_id] == {key_of(kept): kept.expires_at}


def reaches_all(fleet: SshFleet, host: SshHost, port: int) -> list[bool]:
    return [
        call_in_netns(fleet.client_ns(j), lambda: tcp_connects(host.address, port, 0.5)) for j in range(2)
    ]
