"""Learning with blocks on a real host: the segment server's own per-asset steps
(:func:`~zerogate.segment.reconcile.decide` / :func:`~zerogate.segment.reconcile.execute`
through :class:`~zerogate.segment.daemon.SshHostOps`), run in an
:class:`~zerogate.testbed.sshhosts.SshFleet`'s server namespace against a host
with sshd, nftables and conntrack, with a client in another namespace.

In this mode (:mod:`zerogate.segment.plan`) enforcement is on but the chain's
policy is accept: only the approved deny rules drop, and learning goes on. So a
client's connection to a denied port is refused, while a connection no rule
names still passes and is learned, and reaches the controller as a flow in the
report. A refused connection is not learned: the kernel never confirms its
conntrack entry, so it never becomes a flow (and so never a proposed accept).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.model.snapshot import SegmentAsset
from zerogate.segment.checks import tcp_connects
from zerogate.segment.daemon import SshHostOps
from zerogate.segment.reconcile import AssetMemory, asset_report, decide, execute, remember
from zerogate.segment.ssh import Access
from zerogate.testbed.sshhosts import (
    SERVER_ADDRESS,
    SshFleet,
    SshHost,
    call_in_netns,
    client_address,
    tcp_services,
)

pytestmark = [
    pytest.mark.xdist_group("segment-hosts"),
    pytest.mark.skipif(
        os.geteuid() != 0
        or not all(shutil.which(t) for t in ("ip", "nft", "conntrack", "ss", "ssh", "ssh-keyscan", "setsid"))
        or not Path("/usr/sbin/sshd").exists(),
        reason="needs root, iproute2, nftables, conntrack and openssh (client and server)",
    ),
]

ALLOWED, DENIED = 8080, 9090  # no rule names 8080; an approved deny rule names 9090
COLLECT_EVERY = 1.0


@pytest.fixture
def served(fleet: SshFleet) -> Iterator[SshHost]:
    """The fleet's host with an HTTP server on each of ALLOWED and DENIED (stopped by PID)."""
    with tcp_services(fleet.hosts[0], (ALLOWED, DENIED)) as host:
        yield host


@pytest.fixture
def ops(fleet: SshFleet, tmp_path: Path) -> Iterator[SshHostOps]:
    """The server's SSH backend; remote_dir, since root's default (/var/lib/zerogate/segment)
    would be this machine's own. Whatever it still runs in the background stops at the end."""
    backend = SshHostOps(Access(fleet.key, tmp_path / "state", remote_dir=str(tmp_path / "on-host")))
    try:
        yield backend
    finally:
        backend.retain(frozenset())


def with_blocks(host: SshHost, revision: int = 2, **fields: Any) -> SegmentAsset:
    deny = {"rule_id": 7, "action": "drop", "protocol": "tcp", "port_first": DENIED, "port_last": DENIED,
            "sources": []}  # fmt: skip
    return host.asset(mode="learning_with_blocks", rules_revision=revision, rules=[deny], **fields)


def test_learning_with_blocks_drops_the_denied_port_and_learns_the_rest(
    fleet: SshFleet, served: SshHost, ops: SshHostOps
) -> None:
    host = served
    memory: AssetMemory | None = None

    def step(asset: SegmentAsset, now: float) -> AssetMemory:
        nonlocal memory
        m = remember(memory, asset)
        steps = decide(asset, m, now, collect_every=COLLECT_EVERY)
        memory = fleet.call(lambda: execute(asset, m, steps, ops, now))
        return memory

    def client_connects(port: int) -> bool:
        return call_in_netns(fleet.client_ns(), lambda: tcp_connects(host.address, port, 1.0))

    def table(name: str) -> str | None:
        r = fleet.nft(host, "list", "table", "inet", name)
        return r.stdout if r.returncode == 0 else None

    asset = with_blocks(host)
    m = step(asset, 0.0)
    assert m.steps_done == ["preflight", "enforce", "start_learning", "collect"], m.detail
    assert (m.state, m.enforced_revision) == ("enforced", 2), m.detail
    enforced = table("zerogate_segment") or ""
    assert "policy accept" in enforced and f"tcp dport {DENIED} drop" in enforced
    assert table("zerogate_learn") is not None  # learning goes on under enforcement

    # enforcement is on: the denied port is refused, a port no rule names passes
    assert not client_connects(DENIED)
    assert client_connects(ALLOWED)
    assert not client_connects(DENIED)  # a second attempt: refused again

    m = step(asset, 10.0)
    assert m.steps_done == ["collect"] and m.state == "enforced", m.detail
    learned = {(f.direction, f.protocol, f.port, str(f.peer)) for f in m.flows}
    assert ("inbound", "tcp", ALLOWED, str(client_address(0))) in learned
    assert ("inbound", "tcp", 22, str(SERVER_ADDRESS)) in learned  # management itself, through SSH
    assert not any(f.port == DENIED for f in m.flows)  # refused: never a flow, never a proposal

    # what the controller receives: the asset enforced, with the learned flow
    report = asset_report(asset, m, m.flows)
    assert (report.state, report.enforced_revision) == ("enforced", 2)
    assert any(f.local_port == ALLOWED and f.peer == client_address(0) for f in report.flows)
    assert not any(f.local_port == DENIED for f in report.flows)

    # unprotect: both tables go, the denied port answers again
    m = step(host.asset(mode="monitored", rules_revision=3), 20.0)
    assert m.state == "ready", m.detail
    assert table("zerogate_segment") is None and table("zerogate_learn") is None
    assert client_connects(DENIED)
