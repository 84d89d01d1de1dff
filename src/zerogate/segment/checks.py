"""The check an enforcement must pass before its rollback is disarmed.

A *fresh* SSH login (a new TCP connection: the session that loaded the rules
survives through conntrack and proves nothing; before anything changes, the login
that opened the operation's shared session moments ago counts), then a TCP connect from the
segment server to each approved service it can test: a TCP port of an accept
rule that admits the server's address and that something listens on. The first
run (before anything changes) records which of those answer; later runs require
the same ones to answer still, so a service that was down before does not block
enforcement, and one the new table cuts off rolls it back.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from zerogate.deploy.firewall.checks import CheckResult
from zerogate.model.segment import Address, Listener
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.command import CommandError, run
from zerogate.segment.ssh import AssetTarget

MAX_PROBED_PORTS = 16  # per asset: the check must fit in the rollback's deadline


def probed_ports(asset: SegmentAsset, servers: Sequence[Address], listeners: Sequence[Listener]) -> list[int]:
    """TCP ports of accept rules the server may reach itself and something listens on (sorted, capped)."""
    ports: set[int] = set()
    for rule in asset.rules:
        if rule.action != "accept" or rule.protocol != "tcp":
            continue
        if rule.sources and not any(
            s in net for s in servers for net in rule.sources if s.version == net.version
        ):
            continue
        for li in listeners:
            if rule.port_first <= li.port <= rule.port_last and li.accepts("tcp", asset.address, li.port):
                ports.add(li.port)
    return sorted(ports)[:MAX_PROBED_PORTS]


def fresh_login(target: AssetTarget, timeout: float) -> CheckResult:
    """A new SSH connection (never the shared session) that runs ``true`` within ``timeout``."""
    start = time.monotonic()
    argv = target.ssh_argv(["true"], connect_timeout=max(1, math.ceil(timeout)), fresh=True)
    try:
        r = run(argv, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except CommandError as exc:
        reason = f"no answer within {timeout:g} s" if exc.returncode == -1 else exc.stderr
        return CheckResult(False, f"no fresh SSH login to {target.name} ({reason})")
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        reason = lines[-1].strip() if lines else f"ssh exited {r.returncode}"
        return CheckResult(False, f"no fresh SSH login to {target.name} ({reason})")
    return CheckResult(True, f"fresh SSH login to {target.name} in {time.monotonic() - start:.2f} s")


def tcp_connects(address: Address, port: int, timeout: float) -> bool:
    """Whether a new TCP connection to ``address``:``port`` is accepted within ``timeout``."""
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(max(0.1, timeout))
            s.connect((str(address), port))
        return True
    except OSError:
        return False


@dataclass
class AssetCheck:
    """Fresh SSH login plus service connects; see the module docstring."""

    target: AssetTarget
    address: Address
    ports: Sequence[int]
    timeout: float = 5.0
    baseline: list[int] | None = field(default=None, init=False)

    def run(self) -> CheckResult:
        start = time.monotonic()
        login = self._reused_login() if self.baseline is None else None
        login = login or fresh_login(self.target, self.timeout)
        if not login.ok:
            return login
        answering: list[int] = []
        silent: list[int] = []
        wanted = self.ports if self.baseline is None else self.baseline
        for port in wanted:
            left = self.timeout - (time.monotonic() - start)
            (answering if left > 0 and tcp_connects(self.address, port, min(left, 2.0)) else silent).append(
                port
            )
        if self.baseline is None:
            self.baseline = answering
            return CheckResult(True, f"{login.detail}; services answering: {_ports(answering)}")
        if silent:
            return CheckResult(False, f"{login.detail}, but TCP {_ports(silent)} no longer answer(s)")
        return CheckResult(True, f"{login.detail}; TCP {_ports(answering)} still answer(s)")

    def _reused_login(self) -> CheckResult | None:
        """Before anything changes: the operation's own session, when its first command opened
        it within ``timeout``, was a new login already (one handshake fewer per enforcement).
        The check after the change never takes this: it needs a connection opened after it."""
        at = self.target.fresh_login_at
        if at is None or time.monotonic() - at > self.timeout:
            return None
        return CheckResult(True, f"new SSH login to {self.target.name} {time.monotonic() - at:.2f} s ago")


def _ports(ports: Sequence[int]) -> str:
    return ", ".join(map(str, ports)) or "none tested"
