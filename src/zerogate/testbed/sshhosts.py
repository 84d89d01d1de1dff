"""A fleet of real SSH hosts for segment tests, the demo and benchmarks.

``with SshFleet(n, tmp) as fleet:`` builds, all names prefixed ``zgsh<6 hex>``:

- a *server* namespace (``<prefix>-s``) holding a bridge ``zgbr`` with
  :data:`SERVER_ADDRESS`: the segment server's side (run server code there with
  :meth:`SshFleet.call`, or commands with :meth:`SshFleet.run`);
- ``n`` host namespaces (``<prefix>-<i>``), each with ``eth0`` (a veth to the
  bridge), an address in 10.99.0.0/16, its own sshd (fresh host key; root logs in
  with the server's key) and nftables;
- ``clients`` client namespaces (``<prefix>-c<j>``) on the same bridge, to make
  traffic from somewhere other than the server;
- optionally (``sudo_user=True``) a dedicated non-root account with exactly the
  segment sudoers line, for the ``sudo -n`` path. It is created with ``useradd``
  and a drop-in in /etc/sudoers.d, and both are removed on close, also after a
  failure.

Hosts start in parallel (at most ``parallel`` at a time), each awaited with a
condition (sshd logs that it listens). ``close`` stops every process it started
and every process left in its namespaces by PID, then deletes the namespaces;
it never raises. A failed start raises :class:`FleetError` with the sshd log tail.

Scale (500-1,000 hosts): the namespaces are made and deleted with one ``ip -batch``
each way, every host's bridge port is enslaved in one batch at the end, a host
costs three programs to start (its ``ip -batch``, ``ssh-keygen`` and sshd), and
``close`` finds the processes left in the fleet's namespaces with one pass over
/proc rather than one ``ip netns pids`` (itself a pass over /proc) per namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from zerogate.model.snapshot import SegmentAsset
from zerogate.netops import netns
from zerogate.netops.command import CommandError, run
from zerogate.netops.command import stop as stop_processes
from zerogate.segment.checks import tcp_connects
from zerogate.segment.ssh import sudoers_line
from zerogate.testbed.apps import SshdProcess, launch_sshd, netns_launcher
from zerogate.testbed.lab import wait_for
from zerogate.testbed.topology import TestbedError

T = TypeVar("T")

SERVER_ADDRESS = IPv4Address("10.99.0.1")
PREFIX_LEN = 16
BRIDGE = "zgbr"
MAX_PORTS = 1024  # a Linux bridge takes at most this many ports (hosts + clients)
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class FleetError(TestbedError):
    """The fleet could not be built; the message names the host and ends with its sshd log."""


def host_address(i: int) -> IPv4Address:
    return IPv4Address(int(SERVER_ADDRESS) + 1 + i)


def client_address(j: int) -> IPv4Address:
    return IPv4Address(f"10.99.254.{j + 1}")


@dataclass
class SshHost:
    index: int
    ns: str
    address: IPv4Address
    base: Path
    sshd: SshdProcess | None = None

    @property
    def host_key(self) -> str:
        """``type base64`` as pinned (no comment)."""
        assert self.sshd is not None
        return " ".join(self.sshd.host_public_key.split()[:2])

    def asset(self, user: str = "root", **fields: Any) -> SegmentAsset:
        """This host as the controller's snapshot would list it (key pinned, mode monitored)."""
        data: dict[str, Any] = {
            "asset_id": self.index + 1, "name": f"host{self.index}", "address": str(self.address),
            "ssh_port": 22, "ssh_user": user, "host_key": self.host_key, "mode": "monitored",
            "rules_revision": 1, "rules": [], "jump_hosts": [],
        }  # fmt: skip
        data.update(fields)
        return SegmentAsset.model_validate(data)


@dataclass
class SshFleet:
    """See the module docstring."""

    count: int
    tmp: Path
    clients: int = 1
    sudo_user: bool = False
    parallel: int = 16
    prefix: str = field(default_factory=lambda: f"zgsh{secrets.token_hex(3)}")
    hosts: list[SshHost] = field(default_factory=list)
    user: str | None = None  # the non-root account, when ``sudo_user``
    _namespaces: list[str] = field(default_factory=list)
    _sudoers: Path | None = None
    _home: Path | None = None
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @property
    def server_ns(self) -> str:
        return f"{self.prefix}-s"

    @property
    def key(self) -> Path:
        """The segment server's private key (every host authorizes it)."""
        return self.tmp / "server_ed25519"

    def client_ns(self, j: int = 0) -> str:
        return f"{self.prefix}-c{j}"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SshFleet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self.count < 1 or self.count + self.clients > MAX_PORTS:
            raise FleetError(f"a fleet has 1 to {MAX_PORTS} hosts and clients together, not {self.count}")
        self.tmp.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zerogate-segment", "-f", str(self.key)])
        self._add_namespaces([self.server_ns])
        netns.run_batch(
            [["link", "set", "lo", "up"], ["link", "add", BRIDGE, "type", "bridge"],
             ["addr", "add", f"{SERVER_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE], ["link", "set", BRIDGE, "up"]],
            self.server_ns,
        )  # fmt: skip
        if self.sudo_user:
            self._add_user()
        users = ("root", self.user) if self.user else ("root",)
        self.hosts = [
            SshHost(i, f"{self.prefix}-{i}", host_address(i), self.tmp / f"host{i}")
            for i in range(self.count)
        ]
        tags = [str(h.index) for h in self.hosts] + [f"c{j}" for j in range(self.clients)]
        self._add_namespaces([h.ns for h in self.hosts] + [self.client_ns(j) for j in range(self.clients)])
        jobs: list[Callable[[], None]] = [functools.partial(self._start_host, h, users) for h in self.hosts]
        jobs += [
            functools.partial(self._attach, self.client_ns(j), f"c{j}", client_address(j))
            for j in range(self.clients)
        ]
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()
        # sshd listens on its address whether or not the port is on the bridge yet
        ports = [f"v{t}" for t in tags]
        enslave = [["link", "set", v, "master", BRIDGE] for v in ports]
        enslave += [["link", "set", v, "up"] for v in ports]
        netns.run_batch(enslave, self.server_ns, timeout=_batch_timeout(enslave))

    def _add_namespaces(self, names: Sequence[str]) -> None:
        """Create ``names`` in one ``ip -batch`` (each recorded first, so close removes it)."""
        with self._guard:
            self._namespaces.extend(names)
        netns.run_batch([netns.cmd_add_namespace(name) for name in names], timeout=_batch_timeout(names))

    def _attach(self, ns: str, tag: str, address: IPv4Address) -> None:
        """``ns`` (already made) with ``lo`` up and ``eth0`` a veth to port ``v<tag>`` of the
        server namespace, at ``address``; the port joins the bridge once every host is up."""
        netns.run_batch(
            [["link", "set", "lo", "up"],
             ["link", "add", "eth0", "type", "veth", "peer", "name", f"v{tag}", "netns", self.server_ns],
             ["addr", "add", f"{address}/{PREFIX_LEN}", "dev", "eth0"], ["link", "set", "eth0", "up"]], ns,
        )  # fmt: skip

    def _start_host(self, host: SshHost, users: Sequence[str]) -> None:
        self._attach(host.ns, str(host.index), host.address)
        authorized = self.key.with_suffix(".pub").read_text()
        try:
            host.sshd = launch_sshd(netns_launcher(host.ns), host.base, host.address, authorized, users=users)
        except TestbedError as exc:
            raise FleetError(f"host {host.index} ({host.ns}): {exc}") from None

    def _add_user(self) -> None:
        """A throwaway account with exactly the segment sudoers line (removed by close)."""
        name = self.prefix  # "zgsh" + 6 hex: a valid, unique user name
        home = Path(tempfile.mkdtemp(prefix=f"{name}-home-"))  # 0700; /tmp so the account can reach it
        self._home = home
        run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
             "--password", "*", "--no-user-group", "--gid", "nogroup", name])  # fmt: skip
        self.user = name
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
            shutil.chown(path, name)
        sudoers = Path(f"/etc/sudoers.d/{name}")
        text = sudoers_line(name) + "\n"
        run(["visudo", "-c", "-q", "-f", "-"], input=text)  # a bad file would break sudo for everyone
        tmp = sudoers.with_name(f".{name}.tmp")  # sudo skips names with a dot
        tmp.write_text(text)
        tmp.chmod(0o440)
        self._sudoers = sudoers
        tmp.replace(sudoers)

    def close(self) -> None:
        """Stop every process by PID, remove every namespace, the account and its sudoers file."""
        _stop_all([h.sshd.process for h in self.hosts if h.sshd is not None])
        names = list(reversed(self._namespaces))
        with contextlib.suppress(OSError):
            for pid in _pids_in(names) - {os.getpid()}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # sessions, servers and rollbacks left in our namespaces
        with contextlib.suppress(CommandError):
            netns.run_batch(
                [netns.cmd_delete_namespace(ns) for ns in names], force=True, timeout=_batch_timeout(names)
            )
        for ns in names:  # what the batch left (it reports, but does not retry)
            if Path(f"/run/netns/{ns}").exists():
                with contextlib.suppress(CommandError):
                    netns.delete_namespace(ns)
        self._namespaces.clear()
        if self._sudoers is not None:
            self._sudoers.unlink(missing_ok=True)
            self._sudoers = None
        if self.user is not None:
            with contextlib.suppress(CommandError):
                run(["userdel", self.user], check=False)
            self.user = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    # ------------------------------------------------------------------ using it

    def call(self, fn: Callable[[], T], timeout: float = 600) -> T:
        """Run ``fn`` in a thread that joined the server namespace: its sockets, the
        threads it starts and the programs they run (``ssh``) are all on the server's side."""
        return call_in_netns(self.server_ns, fn, timeout)

    def run(self, ns: str, argv: Sequence[str], *, input: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return netns.run_in(ns, argv, input=input, check=check, timeout=timeout)

    def nft(self, host: SshHost, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(host.ns, ["nft", *args], check=False)

    def logs(self) -> str:
        """Every host's sshd log tail (for a failed test's output)."""
        parts = []
        for host in self.hosts:
            if host.sshd is not None:
                with contextlib.suppress(OSError):
                    tail = host.sshd.log.read_text(errors="replace").splitlines()[-15:]
                    parts.append(f"--- {host.ns} sshd log\n" + "\n".join(tail))
        return "\n".join(parts)


def _batch_timeout(lines: Sequence[object]) -> float:
    return 30.0 + 0.1 * len(lines)  # generous: the machine may be busy with others' work


def _stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process first (they stop in parallel), then SIGKILL one that is still
    there after 5 s. Never raises."""
    stop_processes(procs)


def _pids_in(namespaces: Sequence[str]) -> set[int]:
    """PIDs of the processes whose network namespace is one of ``namespaces``: one pass over /proc."""
    wanted: set[tuple[int, int]] = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{ns}")
            wanted.add((st.st_dev, st.st_ino))
    found: set[int] = set()
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread
                st = os.stat(f"/proc/{entry.name}/ns/net")
                if (st.st_dev, st.st_ino) in wanted:
                    found.add(int(entry.name))
    return found


def call_in_netns(name: str, fn: Callable[[], T], timeout: float = 600) -> T:
    """Run ``fn`` in a new thread that joined network namespace ``name`` (setns)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {name}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"work in namespace {name} did not finish within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def answers(host: SshHost, port: int) -> Callable[[], bool]:
    """Whether TCP ``port`` answers on the host, asked from the host itself."""
    return lambda: call_in_netns(host.ns, lambda: tcp_connects(host.address, port, 1.0))


@contextlib.contextmanager
def tcp_services(host: SshHost, ports: Sequence[int]) -> Iterator[SshHost]:
    """A small HTTP server on each of ``ports`` of the host, up before this yields and
    stopped by PID afterwards (learned, approved, denied or opened services in tests)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            argv = [sys.executable, "-m", "http.server", str(port), "--bind", str(host.address)]
            procs.append(subprocess.Popen(["ip", "netns", "exec", host.ns, *argv],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            wait_for(answers(host, port), 30, f"the service on port {port} of {host.ns}")
        yield host
    finally:
        _stop_all(procs)
