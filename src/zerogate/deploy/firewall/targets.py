"""Where a commit-confirmed apply happens: the :class:`Target` interface and this host.

A target runs argv (with ``LC_ALL=C``), keeps the ruleset copy and the snapshot in
a directory of its own, and arms the rollback *on itself* before the change, so the
rollback fires even if the controlling side dies. :class:`LocalTarget` is this host:
its rollback is a detached ``python -m zerogate.deploy.firewall.rollback_timer``
process that also records the outcome in the state directory. The SSH target is in
:mod:`zerogate.deploy.firewall.ssh`; :func:`open_target` picks one from ``--target``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from zerogate.deploy.firewall.checks import ManagementCheck, SshBannerCheck
from zerogate.deploy.firewall.errors import BackendError
from zerogate.deploy.firewall.remote_timer import TimerState
from zerogate.deploy.firewall.ssh import SshTarget, parse_ssh_url
from zerogate.deploy.firewall.ssh_batch import Committed, Staged
from zerogate.deploy.firewall.state import KEEP_APPLIES, PendingApply, StateStore
from zerogate.netops.command import CommandError, spawn
from zerogate.netops.command import run as run_command

TIMER_FLAG = "--rollback-timer"
TIMER_MODULE = "zerogate.deploy.firewall.rollback_timer"  # not __name__: "__main__" inside the timer
LOCAL_CHECK_GRACE = 3.0  # timer deadline while the check runs: check timeout + this (apply holds the lock)


class Target(Protocol):
    """One host that applies rulesets and arms its own rollback."""

    name: str  # "local" or "ssh://user@host:port": shown to the user, kept in pending.json
    state_key: str  # "" for this host; else the subdirectory of the state dir for this target
    check_grace: float  # the check-phase rollback fires this long after the check timeout
    nft: str  # the nft command on the target

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on the target; ``BackendError`` / ``TargetUnreachable`` if it could not run."""
        ...

    def write(self, name: str, text: str) -> str:
        """Write a 0600 file into the target's directory (atomically); return its path there."""
        ...

    def remove(self, paths: Sequence[str]) -> None: ...

    def prune(self, keep: int = KEEP_APPLIES) -> None: ...

    def arm(self, p: PendingApply) -> PendingApply:
        """Arm the rollback of ``p`` on the target to fire at ``p.deadline``; return ``p`` with its handle."""
        ...

    def rearm(self, old: PendingApply, new: PendingApply) -> PendingApply:
        """Move the armed rollback to ``new.deadline``; ``ConfirmTooLate`` if ``old``'s fired meanwhile."""
        ...

    def disarm(self, p: PendingApply) -> TimerState:
        """Stop ``p``'s armed rollback: ``cancelled``, or ``fired``/``failed`` if it ran already, or ``gone``."""
        ...

    def timer_state(self, p: PendingApply) -> TimerState: ...

    def default_check(self, timeout: float) -> ManagementCheck: ...


@runtime_checkable
class StagingTarget(Target, Protocol):
    """A target that does an apply's steps in two round trips (an SSH target; see
    :mod:`zerogate.deploy.firewall.ssh_batch`): the engine uses them when it can."""

    def path_of(self, name: str) -> str:
        """Where ``write(name, ...)`` puts a file on the target."""
        ...

    def stage(self, name: str, text: str, tables: Sequence[tuple[str, str]]) -> Staged:
        """Write and validate the ruleset copy; list ``tables`` and find stale files."""
        ...

    def commit(self, p: PendingApply, snapshot: str, stale: Sequence[str]) -> Committed:
        """Write and validate the snapshot, prune, arm ``p``'s rollback, then load its ruleset."""
        ...

    def armed(self, p: PendingApply, arm_output: str | None) -> PendingApply:
        """``p`` with the handle of the rollback the commit armed (``None``: about to arm, no PID)."""
        ...


# --------------------------------------------------------------------------- this host


def timer_argv(python: str, state_dir: Path, token: str) -> list[str]:
    return [python, "-m", TIMER_MODULE, TIMER_FLAG, str(state_dir), token]


def is_timer_cmdline(raw: bytes, token: str) -> bool:
    """Whether a /proc/PID/cmdline belongs to the rollback timer for ``token``."""
    args = raw.decode(errors="replace").split("\0")
    return TIMER_FLAG in args and token in args and TIMER_MODULE in args


def spawn_timer(store: StateStore, token: str) -> int:
    """Start the detached rollback timer (own session, no inherited fds); return its PID."""
    logf = os.open(store.root / "timer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = spawn(
            timer_argv(sys.executable, store.root, token),
            stdout=logf,
            stderr=logf,
            cwd="/",
            start_new_session=True,
        )
    except CommandError as exc:
        raise BackendError(f"cannot start the rollback timer: {exc.stderr}") from exc
    finally:
        os.close(logf)
    return proc.pid


def stop_timer(pid: int | None, token: str, wait: float = 3.0) -> bool:
    """SIGTERM the timer if ``pid`` is still our timer for ``token`` (pidfd: no PID-reuse race)."""
    if not pid or pid == os.getpid():
        return False
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if not is_timer_cmdline(cmdline, token):
            return False
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not select.select([fd], [], [], wait)[0]:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def timer_alive(pid: int | None, token: str) -> bool:
    if not pid:
        return False
    try:
        return is_timer_cmdline(Path(f"/proc/{pid}/cmdline").read_bytes(), token)
    except OSError:
        return False


class LocalTarget:
    """This host: files in the state directory, the rollback a detached zerogate process.

    That timer re-reads the deadline from ``pending.json`` and restores under the state
    lock, recording the outcome itself, so moving the deadline is just rewriting the file
    and the controlling side never finds a rollback that fired behind its back.
    """

    name = "local"
    state_key = ""
    check_grace = LOCAL_CHECK_GRACE

    def __init__(self, store: StateStore, nft: str | None = None) -> None:
        self.store = store
        self.nft = nft or shutil.which("nft") or "/usr/sbin/nft"

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        try:
            return run_command(argv, input=stdin, timeout=timeout, check=False)
        except CommandError as exc:  # missing, not executable or timed out
            raise BackendError(f"cannot run {argv[0]}: {exc.stderr}") from exc
        except OSError as exc:  # anything else the kernel refuses (e.g. not a valid executable)
            raise BackendError(f"cannot run {argv[0]}: {exc}") from exc

    def write(self, name: str, text: str) -> str:
        return str(self.store.write(name, text))

    def remove(self, paths: Sequence[str]) -> None:
        for path in paths:
            Path(path).unlink(missing_ok=True)

    def prune(self, keep: int = KEEP_APPLIES) -> None:
        self.store.prune(keep)

    def arm(self, p: PendingApply) -> PendingApply:
        return replace(p, timer="process", timer_pid=spawn_timer(self.store, p.token))

    def rearm(self, old: PendingApply, new: PendingApply) -> PendingApply:
        return new  # the running timer picks the new deadline up from pending.json

    def disarm(self, p: PendingApply) -> TimerState:
        return "cancelled" if stop_timer(p.timer_pid, p.token) else "gone"

    def timer_state(self, p: PendingApply) -> TimerState:
        return "armed" if timer_alive(p.timer_pid, p.token) else "gone"

    def default_check(self, timeout: float) -> ManagementCheck:
        return SshBannerCheck("127.0.0.1", 22, timeout=timeout)


# --------------------------------------------------------------------------- choosing one


def open_target(
    target: str, state_dir: Path, known_hosts: Path | None = None, identity: Path | None = None
) -> tuple[Target, StateStore]:
    """``local`` or ``ssh://[USER@]HOST[:PORT][/DIR]`` with its state store; ``ValueError`` if malformed."""
    if target == "local":
        if known_hosts is not None or identity is not None:
            raise ValueError("--known-hosts and --identity apply to an ssh:// --target only; drop them")
        store = StateStore(state_dir)
        return LocalTarget(store), store
    if not target.startswith("ssh://"):
        raise ValueError(
            f"--target {target!r}: use 'local' or ssh://USER@HOST[:PORT][/DIR], e.g. ssh://root@192.0.2.10"
        )
    if known_hosts is None:
        raise ValueError(
            "an ssh:// --target needs --known-hosts FILE holding its pinned host key "
            "(e.g. from ssh-keyscan, checked against the host's fingerprint out of band)"
        )
    ssh = SshTarget(parse_ssh_url(target), known_hosts, identity)
    return ssh, StateStore(state_dir / "targets" / ssh.state_key)
