"""The one way zerogate runs a program: argv only (never a shell), ``LC_ALL=C``,
a timeout, and a typed error that carries the command and its output.

Errors::

    CommandError        the program was missing, timed out or exited non-zero
                        (argv, returncode, stderr, stdout; 127 = not found, -1 = timeout)

The locale is pinned so that the few places that must read a tool's own words
(wireguard-go's "UAPI listen error", ip's "No such process") read English.
Long-running programs (daemons in tests, the demo) start with :func:`spawn`,
which pins the locale the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A system command failed; the message names the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdout: str = "") -> None:
        self.argv = [str(a) for a in argv]
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.stdout = stdout
        shown = " ".join(self.argv[:4]) + (" ..." if len(self.argv) > 4 else "")
        detail = " ".join(self.stderr.split())[-800:] or "no error output"
        super().__init__(f"'{shown}' failed ({returncode}): {detail}")


def require(tool: str, package: str) -> str:
    """The path of ``tool``, or an error saying which Debian package provides it."""
    path = shutil.which(tool)
    if path is None:
        raise CommandError([tool], 127, f"{tool} not found: install the Debian package '{package}'")
    return path


def command_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with the C locale pinned."""
    base = dict(os.environ if env is None else env)
    base.pop("LANGUAGE", None)  # GNU gettext reads it before LC_ALL for messages
    base["LC_ALL"] = "C"
    return base


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 60,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and capture its output as text; raise :class:`CommandError`
    when it is missing or times out, and on a non-zero exit when ``check``.
    ``kwargs`` go to :func:`subprocess.run` (``cwd``, ``user``, ``group``…)."""
    args = [str(a) for a in argv]
    try:
        r = subprocess.run(
            args,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=command_env(env),
            **kwargs,
        )
    except FileNotFoundError:
        raise CommandError(args, 127, f"{args[0]} not found") from None
    except PermissionError as exc:
        raise CommandError(args, 126, f"{args[0]} cannot be run: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CommandError(args, -1, f"timed out after {timeout:g} s") from None
    if check and r.returncode != 0:
        raise CommandError(args, r.returncode, r.stderr or r.stdout, r.stdout)
    return r


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.STDOUT,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the background (C locale); the caller owns the process
    and stops it by its PID."""
    args = [str(a) for a in argv]
    try:
        return subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=stderr, env=command_env(env), **kwargs
        )
    except FileNotFoundError:
        raise CommandError(args, 127, f"{args[0]} not found") from None


def stop(procs: Sequence[subprocess.Popen[bytes]], grace: float = 5.0) -> list[bool]:
    """Stop processes we started, by PID: SIGTERM to all at once (they wind down in
    parallel), SIGKILL to whatever still runs ``grace`` seconds later. Never raises;
    per process, whether it ended on SIGTERM (False also when it had already exited)."""
    running = [proc.poll() is None for proc in procs]
    for proc, alive in zip(procs, running, strict=True):
        if alive:
            with contextlib.suppress(OSError):
                proc.terminate()
    deadline = time.monotonic() + grace
    ended = []
    for proc, alive in zip(procs, running, strict=True):
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
            ended.append(alive)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            ended.append(False)
    return ended
