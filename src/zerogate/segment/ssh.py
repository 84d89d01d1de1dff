"""One segment asset over SSH: the firewall engine's :class:`SshTarget`, pinned to the
asset's own host key, with every privileged command as ``sudo -n <exact argv>`` when
the login is not root.

The asset's pinned key (``SegmentAsset.host_key``) is written to a known_hosts file
of its own under the server's state directory, and ``ssh`` runs with
``StrictHostKeyChecking=yes`` against it only (see :mod:`zerogate.deploy.firewall.ssh`):
a host that offers another key is refused by ``ssh`` itself and reported as
:class:`HostKeyChanged`, which stops management of that host; it is never re-pinned
here. An asset without a pinned key raises :class:`HostKeyUnknown` before any
connection (onboarding scans the key and the admin trusts it).

The privileged commands are exactly the ones :func:`sudoers_line` grants, so a
dedicated account needs nothing else: ``nft -f -`` and ``nft -c -f -`` (scripts on
stdin, never a path), ``nft list tables``, ``nft list table inet zerogate_segment``,
``conntrack -L -o extended``, ``conntrack -E -e NEW -o timestamp,extended`` (the
learning event stream, :mod:`zerogate.segment.events`) and ``ss -H -tuln -p``. The commit-confirm engine's
``nft -f FILE`` becomes ``sudo -n nft -f - < FILE`` (the redirection is the
login's own shell reading its own file), and the rollback armed on the host is a
detached process of that user that runs the same at fire time.

Errors (all :class:`~zerogate.deploy.firewall.errors.FirewallApplyError`):
:class:`HostKeyUnknown`, :class:`HostKeyChanged` (a ``TargetUnreachable``), and
the engine's own ``BackendError`` / ``TargetUnreachable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zerogate.deploy.firewall.errors import BackendError, FirewallApplyError, TargetUnreachable
from zerogate.deploy.firewall.remote_timer import TimerMode
from zerogate.deploy.firewall.ssh import CONNECT_TIMEOUT, SshAddress, SshTarget
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.command import CommandError, run
from zerogate.segment.plan import TABLE_FAMILY, TABLE_NAME
from zerogate.segment.sshmux import terminate_master

# Absolute paths: sudoers matches commands by path (Debian's, merged /usr).
NFT = "/usr/sbin/nft"
CONNTRACK = "/usr/sbin/conntrack"
SS = "/usr/bin/ss"
ROOT_DIR = "/var/lib/zerogate/segment"  # on the asset: snapshots, ruleset copies, rollback markers
USER_DIR = ".zerogate-segment"  # below a non-root login's home directory
# Commands of one operation share one SSH connection (OpenSSH multiplexing): it survives
# a new table through conntrack, so a failed check can still restore at once. The
# check itself always opens a fresh connection.
CONTROL_PERSIST = 15

PRIVILEGED: tuple[tuple[str, ...], ...] = (
    (NFT, "-f", "-"),
    (NFT, "-c", "-f", "-"),
    (NFT, "list", "tables"),
    (NFT, "list", "table", TABLE_FAMILY, TABLE_NAME),
    (CONNTRACK, "-L", "-o", "extended"),
    (CONNTRACK, "-E", "-e", "NEW", "-o", "timestamp,extended"),
    (SS, "-H", "-tuln", "-p"),
)
_HOST_KEY_FAILED = "Host key verification failed"
_FROM_FILE = 'f=$1; shift; exec "$@" < "$f"'  # $1 a file of the login's own, then the argv it feeds


class HostKeyUnknown(FirewallApplyError):
    """The asset has no pinned host key yet: scan it and have the admin trust it first."""


class HostKeyChanged(TargetUnreachable):
    """The asset offered another host key than the pinned one: management of it stops."""


def sudoers_line(user: str) -> str:
    """The sudoers rule a dedicated (non-root) segment account needs, and nothing more."""
    commands = ", ".join(" ".join(_sudoers_word(w) for w in argv) for argv in PRIVILEGED)
    return f"{user} ALL=(root) NOPASSWD: {commands}"


def _sudoers_word(word: str) -> str:
    """A command word as sudoers reads it: ``,`` ``:`` ``=`` and ``\\`` are syntax there."""
    for char in "\\,:=":
        word = word.replace(char, "\\" + char)
    return word


def known_hosts_line(asset: SegmentAsset) -> str:
    """The asset's pinned key as a known_hosts line for the address and port the server dials."""
    if asset.host_key is None:
        raise HostKeyUnknown(
            f"asset {asset.name}: no host key pinned yet; scan it and trust its fingerprint first"
        )
    host = str(asset.address)
    pattern = host if asset.ssh_port == 22 else f"[{host}]:{asset.ssh_port}"
    return f"{pattern} {asset.host_key}\n"


@dataclass(frozen=True)
class Access:
    """How the segment server reaches its assets: its identity key and its state directory.

    ``state_dir`` holds one known_hosts file per asset and, per asset, the engine's
    pending/last state (``targets/<user>@<address>-<port>``).
    """

    identity: Path
    state_dir: Path
    connect_timeout: int = CONNECT_TIMEOUT
    command_timeout: float = 60.0
    # On the assets: where snapshots, ruleset copies and rollback markers go
    # (None: ROOT_DIR for root, USER_DIR below the home directory of another login).
    remote_dir: str | None = None
    # ``ssh -o KexAlgorithms=`` for every connection ("": OpenSSH's own list). The key
    # exchange is most of a new connection's CPU; see the segment settings' ssh_kex_algorithms.
    kex_algorithms: str = ""

    def control_dir(self) -> Path:
        """Where the shared SSH sessions' sockets live: short (a socket path has 108 bytes), 0700, ours."""
        path = Path(tempfile.gettempdir()) / f"zerogate-segment-{os.getuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise FirewallApplyError(f"{path} is not a private directory of this user; remove it")
        return path

    def known_hosts(self, asset: SegmentAsset) -> Path:
        """Write (if changed) and return the asset's own known_hosts file."""
        line = known_hosts_line(asset)
        directory = self.state_dir / "known_hosts"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / str(asset.asset_id)
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        if current != line:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # threads may race here
            tmp.write_text(line)
            tmp.replace(path)
        return path


class AssetTarget(SshTarget):
    """An asset as a commit-confirm target; see the module docstring."""

    def __init__(self, asset: SegmentAsset, access: Access) -> None:
        directory = access.remote_dir or (ROOT_DIR if asset.ssh_user == "root" else USER_DIR)
        address = SshAddress(asset.ssh_user, str(asset.address), asset.ssh_port, directory)
        super().__init__(address, access.known_hosts(asset), access.identity)
        self.asset, self.access = asset, access
        # One shared session per (server state, login): two servers on one machine (other
        # namespaces, other state dirs) that dial the same address must never share a master.
        who = f"{access.state_dir.resolve()}\0{asset.ssh_user}@{asset.address}:{asset.ssh_port}".encode()
        self.control_path = access.control_dir() / hashlib.sha256(who).hexdigest()[:20]
        self.name = f"{asset.name} ({address.url})"
        self.sudo = asset.ssh_user != "root"
        self.nft = NFT
        # When this target's first command opened the shared session (a new TCP connection
        # and login), the monotonic time it answered: that login was fresh, so the check
        # before an enforcement need not open another one (see segment.checks).
        self.fresh_login_at: float | None = None
        self._ran = False
        if self.sudo:
            self.rollback_loader = ("sudo", "-n", NFT, "-f", "-")

    # ------------------------------------------------------------------ running commands

    def ssh_argv(
        self, command: Sequence[str], connect_timeout: int = CONNECT_TIMEOUT, *, fresh: bool = False
    ) -> list[str]:
        """The ``ssh`` command line; through the shared session unless ``fresh``."""
        argv = super().ssh_argv(command, min(connect_timeout, self.access.connect_timeout))
        at = argv.index("--")
        if fresh:
            mux = ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        else:
            mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                   "-o", f"ControlPersist={CONTROL_PERSIST}"]  # fmt: skip
        if self.access.kex_algorithms:
            mux += ["-o", f"KexAlgorithms={self.access.kex_algorithms}"]
        return [*argv[:at], *mux, *argv[at:]]

    def close(self) -> None:
        """End the shared session (if one runs); never raises. The master is asked over its
        socket (:mod:`zerogate.segment.sshmux`); ``ssh -O exit`` only if that fails."""
        if not self.control_path.exists():
            return
        try:
            terminate_master(self.control_path)
            return
        except OSError:
            pass
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            f"ControlPath={self.control_path}",
            "-O",
            "exit",
            "--",
            "zerogate",
        ]
        with contextlib.suppress(CommandError, OSError):
            run(argv, timeout=10, check=False, stdin=subprocess.DEVNULL)

    def __enter__(self) -> AssetTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def privileged(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as the login runs it: as is for root, else ``sudo -n argv``."""
        return ["sudo", "-n", *argv] if self.sudo else list(argv)

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = self._narrowed(argv)
        opens = not self._ran and not self.control_path.exists()
        self._ran = True
        try:
            result = super().run(argv, stdin, self.access.command_timeout if timeout is None else timeout)
            if opens:
                self.fresh_login_at = time.monotonic()
            return result
        except TargetUnreachable as exc:
            if _HOST_KEY_FAILED in str(exc):
                raise HostKeyChanged(
                    f"{self.name} offered a different SSH host key than the one pinned at onboarding; "
                    "management of this host is stopped until an admin checks it and pins the new key"
                ) from None
            raise

    def _narrowed(self, argv: Sequence[str]) -> list[str]:
        """The engine's ``nft [-c] -f FILE`` as ``nft [-c] -f -`` fed from FILE, other nft calls
        as they are; all under sudo for a non-root login."""
        if not argv or argv[0] != NFT:
            return list(argv)
        args = list(argv[1:])
        if self.sudo and args[-2:-1] == ["-f"] and args[-1] != "-":
            path = args[-1]
            loader = self.privileged([NFT, *args[:-1], "-"])
            return ["sh", "-c", _FROM_FILE, "zerogate-stdin", path, *loader]
        return self.privileged(argv)

    def checked(self, argv: Sequence[str], what: str, stdin: str | None = None) -> str:
        """Run a privileged ``argv`` (wrapped as needed); ``BackendError`` on a non-zero exit."""
        r = self.run(self.privileged(argv), stdin)
        if r.returncode != 0:
            reason = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise BackendError(f"{what} on {self.name} failed: {reason}")
        return r.stdout

    def script(self, script: str, args: Sequence[str], what: str) -> str:
        """Run a constant ``sh`` script with ``args`` (``$1``...) in one session; its stdout."""
        r = self.run(["sh", "-c", script, "zerogate-segment", *args])
        if r.returncode != 0:
            reason = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            raise BackendError(f"{what} on {self.name} failed: {reason}")
        return r.stdout

    def timer_mode(self) -> TimerMode:
        # systemd-run needs root; a non-root login arms a detached process of its own
        return "detached" if self.sudo else super().timer_mode()
