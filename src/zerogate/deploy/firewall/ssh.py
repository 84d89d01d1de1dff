"""An SSH target: ruleset, snapshot and the armed rollback on another host, over ``ssh``.

Every command is one run of the system ``ssh`` client with the host key pinned
(``StrictHostKeyChecking=yes``, ``UserKnownHostsFile=`` the given file and no global
file, ``BatchMode=yes``; ``-F /dev/null`` so no ssh_config can loosen that). The
remote login shell receives the argv joined with ``shlex.quote``, so a POSIX shell
sees each element as one word. The target needs ``nft``, ``sh`` and systemd or
``setsid`` -- no zerogate. Files live in the URL's path on the target (default
``/var/lib/zerogate/firewall``); the controlling side keeps pending.json and the lock.

``ssh`` exiting 255 or not answering in time raises ``TargetUnreachable``: whether
the command ran is unknown, so the engine then leaves the armed rollback to fire.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from zerogate.deploy.firewall.checks import CheckResult
from zerogate.deploy.firewall.errors import BackendError, ConfirmTooLate, TargetUnreachable
from zerogate.deploy.firewall.remote_timer import (
    TimerMode,
    TimerState,
    all_timer_names,
    arm_argv,
    cancel_argv,
    detect_argv,
    marker_path,
    parse_armed_pid,
    parse_state,
    pid_path,
    probe_argv,
    timer_name,
)
from zerogate.deploy.firewall.ssh_batch import (
    Committed,
    Staged,
    commit_argv,
    parse_sections,
    stage_argv,
)
from zerogate.deploy.firewall.state import KEEP_APPLIES, PendingApply, stale_files
from zerogate.netops.command import CommandError, run

DEFAULT_TARGET_DIR = "/var/lib/zerogate/firewall"
# The check-phase rollback fires this long after the check timeout: loading the rules
# and re-arming for the confirm window take a few SSH round trips.
SSH_CHECK_GRACE = 10.0
CONNECT_TIMEOUT = 10
_HOST = re.compile(r"[A-Za-z0-9_.:%-]+")
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_WRITE = 'umask 077 && mkdir -p -- "$1" && cat > "$2.tmp" && mv -f -- "$2.tmp" "$2"'


@dataclass(frozen=True)
class SshAddress:
    user: str  # "" = ssh's default (the local user name)
    host: str
    port: int
    directory: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}:{self.port}"


def parse_ssh_url(text: str) -> SshAddress:
    """``ssh://[USER@]HOST[:PORT][/DIR]`` (IPv6 in brackets); ``ValueError`` says what is wrong."""
    how = "write it as ssh://USER@HOST[:PORT][/DIR], e.g. ssh://root@192.0.2.10:22"
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port or 22
    except ValueError as exc:
        raise ValueError(f"--target {text!r}: {exc}; {how}") from None
    host, user = parts.hostname or "", urllib.parse.unquote(parts.username or "")
    if parts.scheme != "ssh" or parts.query or parts.fragment or parts.password is not None:
        raise ValueError(f"--target {text!r}: {how} (no password, query or fragment)")
    if not _HOST.fullmatch(host) or host.startswith("-"):
        raise ValueError(f"--target {text!r}: no usable host name; {how}")
    if user and not _USER.fullmatch(user):
        raise ValueError(f"--target {text!r}: {user!r} is not a user name; {how}")
    directory = urllib.parse.unquote(parts.path).rstrip("/") or DEFAULT_TARGET_DIR
    if not directory.startswith("/") or any(c in directory for c in "\n\0"):
        raise ValueError(f"--target {text!r}: the directory on the target must be an absolute path")
    return SshAddress(user, host, port, directory)


def state_key_of(address: SshAddress) -> str:
    """A directory name for one SSH target (user, host and port; nothing that needs quoting)."""
    who = f"{address.user + '@' if address.user else ''}{address.host}-{address.port}"
    return re.sub(r"[^A-Za-z0-9._@-]", "_", who)


def ssh_argv(
    address: SshAddress,
    known_hosts: Path,
    identity: Path | None,
    command: Sequence[str],
    connect_timeout: int = CONNECT_TIMEOUT,
) -> list[str]:
    """The ``ssh`` command line that runs ``command`` on the target with its host key pinned."""
    argv = [
        "ssh", "-F", "/dev/null", "-T", "-p", str(address.port),
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={_ssh_path(known_hosts)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "ServerAliveInterval=2",
        "-o", "ServerAliveCountMax=3",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if address.user:
        argv += ["-l", address.user]
    if identity is not None:
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", address.host, shlex.join(command)]


class _SshNotRun(Exception):
    """ssh did not finish: it could not be started, or it timed out."""

    def __init__(self, reason: str, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason, self.timed_out = reason, timed_out


def _run_ssh(argv: Sequence[str], stdin: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the ``ssh`` client through the project's command runner, its stdin
    ``stdin`` or else /dev/null (never this terminal). Raises :class:`_SshNotRun`."""
    try:
        if stdin is None:
            return run(argv, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        return run(argv, input=stdin, timeout=timeout, check=False)
    except CommandError as exc:
        raise _SshNotRun(exc.stderr, timed_out=exc.returncode == -1) from exc  # -1: timed out
    except OSError as exc:  # anything else the kernel refuses (e.g. not a valid executable)
        raise _SshNotRun(str(exc), timed_out=False) from exc


def _ssh_path(path: Path) -> str:
    text = str(path.absolute())
    return f'"{text}"' if any(c.isspace() for c in text) else text


class SshTarget:
    """Another host over SSH; see the module docstring."""

    check_grace = SSH_CHECK_GRACE
    nft = "nft"
    sudo = False  # nft as ``sudo -n NFT ... -f -`` fed from the file (see the segment's AssetTarget)
    # The argv the armed rollback loads its snapshot with from stdin; empty: ``nft -f FILE``.
    rollback_loader: tuple[str, ...] = ()

    def __init__(self, address: SshAddress, known_hosts: Path, identity: Path | None = None) -> None:
        for option, path in (("--known-hosts", known_hosts), ("--identity", identity)):
            if path is not None and not path.is_file():
                raise ValueError(f"{option} {path}: no such file")
        self.address, self.known_hosts, self.identity = address, known_hosts, identity
        self.name = address.url
        self.state_key = state_key_of(address)
        self._mode: TimerMode | None = None

    def ssh_argv(self, command: Sequence[str], connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
        return ssh_argv(self.address, self.known_hosts, self.identity, command, connect_timeout)

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.ssh_argv(["env", "LC_ALL=C", *argv])
        try:
            r = _run_ssh(cmd, stdin, timeout)
        except _SshNotRun as exc:
            if exc.timed_out:
                raise TargetUnreachable(f"{self.name} did not answer within {timeout:g} s") from None
            raise BackendError(f"cannot run ssh: {exc.reason}") from exc
        if r.returncode == 255:
            reason = _last_line(r.stderr) or "ssh exited 255"
            raise TargetUnreachable(f"cannot reach {self.name}: {reason}")
        return r

    def _checked(self, argv: Sequence[str], what: str, stdin: str | None = None) -> str:
        r = self.run(argv, stdin)
        if r.returncode != 0:
            raise BackendError(
                f"{what} on {self.name} failed: {_last_line(r.stderr) or f'exit {r.returncode}'}"
            )
        return r.stdout

    def path_of(self, name: str) -> str:
        return f"{self.address.directory}/{name}"

    def write(self, name: str, text: str) -> str:
        path = self.path_of(name)
        self._checked(
            ["sh", "-c", _WRITE, "zerogate-write", self.address.directory, path], f"writing {path}", text
        )
        return path

    def remove(self, paths: Sequence[str]) -> None:
        if paths:
            self._checked(["rm", "-f", "--", *paths], "removing files")

    def prune(self, keep: int = KEEP_APPLIES) -> None:
        directory = self.address.directory
        names = self._checked(["ls", "-1", "--", directory], f"listing {directory}").splitlines()
        self.remove([f"{directory}/{n}" for n in stale_files(names, keep)])

    # ------------------------------------------------------------------ batched steps (ssh_batch)

    def stage(self, name: str, text: str, tables: Sequence[tuple[str, str]]) -> Staged:
        """Write ``text`` as ``name``, validate it, list ``tables`` and the directory: one round trip."""
        path = self.path_of(name)
        detect = self._mode is None
        argv = stage_argv(self.sudo, self.nft, self.address.directory, path, detect, tables)
        got = parse_sections(self.run(argv, text).stdout)
        write, check = got.get("write"), got.get("check")
        if write is None or write.rc != 0:
            raise BackendError(
                f"writing {path} on {self.name} failed: {_last_line(write.text if write else '')}"
            )
        if check is None:
            raise BackendError(f"validating {path} on {self.name}: no answer from nft")
        if check.rc != 0:
            return Staged(path, check.text)
        if detect and "mode" in got:
            self._mode = "systemd" if got["mode"].text.strip() == "systemd" else "detached"
        listed = got.get("tables")
        if listed is None or listed.rc != 0:
            reason = _last_line(listed.text if listed else "") or "no answer"
            raise BackendError(f"nft list tables failed on {self.name}: {reason}")
        listings = {(f, n): got[f"table {f} {n}"] for f, n in tables if f"table {f} {n}" in got}
        ls = got.get("ls")
        names = ls.text.splitlines() if ls is not None and ls.rc == 0 else []
        stale = tuple(self.path_of(n) for n in stale_files(names, KEEP_APPLIES))
        return Staged(path, None, listed.text, listings, stale)

    def commit(self, p: PendingApply, snapshot: str, stale: Sequence[str]) -> Committed:
        """Write and validate the snapshot, prune ``stale``, arm ``p``'s rollback and only
        then load ``p``'s ruleset: one round trip."""
        argv = commit_argv(self.sudo, self.nft, p.snapshot_file, p.ruleset_file, stale, self._arm_argv(p))
        got = parse_sections(self.run(argv, snapshot).stdout)
        write, check = got.get("write"), got.get("check")
        if write is None or write.rc != 0:
            reason = _last_line(write.text if write else "") or "no answer"
            raise BackendError(f"writing {p.snapshot_file} on {self.name} failed: {reason}")
        if check is None:
            raise BackendError(f"validating {p.snapshot_file} on {self.name}: no answer from nft")
        if check.rc != 0:
            return Committed(check.text)
        return Committed(None, got.get("arm"), got.get("load"))

    def armed(self, p: PendingApply, arm_output: str | None) -> PendingApply:
        """``p`` with the handle of the rollback armed for it (the arm's output: the detached PID;
        ``None``: the handle it is about to get, without the PID)."""
        mode = self.timer_mode()
        directory = str(PurePosixPath(p.snapshot_file).parent)
        name = timer_name(p.id, p.phase)
        try:
            pid = parse_armed_pid(arm_output) if mode == "detached" and arm_output is not None else None
        except ValueError as exc:
            raise BackendError(f"arming the rollback on {self.name}: {exc}") from None
        return replace(
            p, timer=mode, timer_unit=name, timer_pid=pid, marker_file=marker_path(directory, p.id)
        )

    def timer_mode(self) -> TimerMode:
        """systemd where it is PID 1 in this network namespace, else a detached process (asked once)."""
        if self._mode is None:
            answer = self._checked(detect_argv(), "detecting systemd").strip()
            self._mode = "systemd" if answer == "systemd" else "detached"
        return self._mode

    def arm(self, p: PendingApply) -> PendingApply:
        return self.armed(p, self._checked(self._arm_argv(p), "arming the rollback"))

    def _arm_argv(self, p: PendingApply) -> list[str]:
        """The command that arms ``p``'s rollback on the target to fire at ``p.deadline``."""
        mode = self.timer_mode()
        directory = str(PurePosixPath(p.snapshot_file).parent)
        name, marker = timer_name(p.id, p.phase), marker_path(directory, p.id)
        seconds = max(1, math.ceil(p.deadline - time.time()))
        return arm_argv(
            mode, name, seconds, p.snapshot_file, marker, pid_path(directory, name), self.rollback_loader
        )

    def rearm(self, old: PendingApply, new: PendingApply) -> PendingApply:
        armed = self.arm(new)  # first the new one: at every moment one rollback is armed
        state = self._cancel(old, [old.timer_unit])
        if state in ("fired", "failed"):
            self._cancel(armed, [armed.timer_unit])
            raise ConfirmTooLate(
                f"the rollback armed on {self.name} fired before the apply finished (loading and "
                "checking took longer than its deadline)"
            )
        return armed

    def disarm(self, p: PendingApply) -> TimerState:
        return self._cancel(p, all_timer_names(p.id))

    def timer_state(self, p: PendingApply) -> TimerState:
        mode, directory, marker = self._handles(p)
        out = self._checked(
            probe_argv(mode, directory, all_timer_names(p.id), marker), "probing the rollback"
        )
        return self._parse(out)[0]

    def default_check(self, timeout: float) -> SshLoginCheck:
        return SshLoginCheck(self, timeout)

    def _cancel(self, p: PendingApply, names: Sequence[str]) -> TimerState:
        mode, directory, marker = self._handles(p)
        out = self._checked(cancel_argv(mode, directory, names, marker), "cancelling the rollback")
        return self._parse(out)[0]

    def _handles(self, p: PendingApply) -> tuple[TimerMode, str, str]:
        modes: dict[str, TimerMode] = {"systemd": "systemd", "detached": "detached"}
        mode = modes.get(p.timer) or self.timer_mode()  # not known if the arm never answered
        directory = str(PurePosixPath(p.snapshot_file).parent)
        return mode, directory, p.marker_file or marker_path(directory, p.id)

    def _parse(self, out: str) -> tuple[TimerState, int | None]:
        try:
            return parse_state(out)
        except ValueError as exc:
            raise BackendError(f"{self.name}: {exc}") from None


@dataclass(frozen=True)
class SshLoginCheck:
    """A fresh SSH login to the target (``true``) that must succeed within ``timeout`` seconds."""

    target: SshTarget
    timeout: float = 5.0

    def run(self) -> CheckResult:
        start = time.monotonic()
        argv = self.target.ssh_argv(["true"], connect_timeout=max(1, math.ceil(self.timeout)))
        try:
            r = _run_ssh(argv, None, self.timeout)
        except _SshNotRun as exc:
            if exc.timed_out:
                return CheckResult(False, f"no SSH login to {self.target.name} within {self.timeout:g} s")
            return CheckResult(False, f"cannot run ssh: {exc.reason}")
        if r.returncode != 0:
            reason = _last_line(r.stderr) or f"ssh exited {r.returncode}"
            return CheckResult(False, f"no SSH login to {self.target.name} ({reason})")
        return CheckResult(True, f"SSH login to {self.target.name} in {time.monotonic() - start:.2f} s")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
