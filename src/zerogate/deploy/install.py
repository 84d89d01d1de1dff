"""What ``zerogate install`` does to a host, as a plan rendered first and applied second.

:func:`plan_install` is pure: from the role, the paths and what already exists
it decides the files to write (with their text and mode), whether the
controller's service user and ownership are needed, and the commands that
start the unit. :func:`apply_install` carries the plan out and says, line by
line, what it did. The CLI (``cli/install.py``) keeps only the flags, the
preflight and enrollment dialogue and the output.

Errors::

    InstallError    a step failed: the message names it and what to look at
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from zerogate.deploy.systemd import (
    SERVICE_USER,
    Role,
    UnitSpec,
    check_unit,
    render_env_file,
    render_unit,
    unit_name,
    verify_unit,
)
from zerogate.netops.command import CommandError, run

NOLOGIN_SHELLS = ("/usr/sbin/nologin", "/bin/false")


class InstallError(RuntimeError):
    """A step of the install failed; nothing after it ran."""


@dataclass(frozen=True)
class FileWrite:
    path: Path
    text: str
    mode: int
    keep_existing: bool = False  # the env file: an admin may have edited it; only its mode is fixed


@dataclass(frozen=True)
class InstallPlan:
    role: Role
    state_dir: Path  # on this host (inside the prefix)
    files: tuple[FileWrite, ...]
    service_user: bool  # create 'zerogate' and give it the state dir (controller at prefix /)
    start: tuple[tuple[str, ...], ...]  # argv to run, in order; empty: leave the unit stopped
    next_steps: tuple[str, ...] = field(default=())  # shown when the unit is not started

    @property
    def unit_path(self) -> Path:
        return next(f.path for f in self.files if f.path.name == unit_name(self.role))


def under(prefix: Path, path: Path) -> Path:
    """``path`` (absolute, as on the target host) inside the install root ``prefix``."""
    return prefix / path.relative_to("/")


def useradd_argv(shell: str) -> list[str]:
    return [
        "useradd", "--system", "--user-group", "--home-dir", "/nonexistent", "--no-create-home",
        "--shell", shell, SERVICE_USER,
    ]  # fmt: skip


def plan_install(
    spec: UnitSpec,
    *,
    prefix: Path,
    unit_dir: Path,
    environ: Mapping[str, str],
    start: bool,
    enrolled: bool,
) -> InstallPlan:
    """The files, user and commands for ``spec`` installed into ``prefix`` (pure).

    ``start``: enable and start the unit (the caller decided systemd runs and
    nothing prevents it); otherwise the plan lists the commands to run later.
    """
    role = spec.role
    unit_text = render_unit(spec)
    problems = check_unit(unit_text)
    if problems:  # a bug in render_unit, never the user's input
        raise InstallError(f"internal error: the rendered unit is malformed: {'; '.join(problems)}")
    files = (
        FileWrite(under(prefix, spec.env_file), render_env_file(role, environ), 0o600, keep_existing=True),
        FileWrite(under(prefix, unit_dir) / unit_name(role), unit_text, 0o644),
    )
    unit = unit_name(role)
    systemctl = (("systemctl", "daemon-reload"), ("systemctl", "enable", "--now", unit))
    later = [" ".join(argv) for argv in systemctl]
    network = role != "controller"
    if network and not enrolled:
        later.insert(0, f"zerogate {role} enroll 'zg1...' --state-dir {spec.state_dir}")
    if not network and prefix != Path("/"):
        # Users and ownership belong to the target host, not to the --prefix tree.
        later[:0] = [
            " ".join(useradd_argv(NOLOGIN_SHELLS[0])) + "  # unless it exists",
            f"chown -R {SERVICE_USER}:{SERVICE_USER} {spec.state_dir}",
        ]
    return InstallPlan(
        role=role,
        state_dir=under(prefix, spec.state_dir),
        files=files,
        service_user=not network and prefix == Path("/"),
        start=systemctl if start else (),
        next_steps=() if start else tuple(later),
    )


def apply_install(plan: InstallPlan) -> tuple[list[str], list[str]]:
    """Carry out ``plan``; return what was done (one line per step) and what
    ``systemd-analyze verify`` says about the unit, checked before it starts."""
    done: list[str] = []
    plan.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(plan.state_dir, 0o700)
    for f in plan.files:
        if f.keep_existing and f.path.exists():
            os.chmod(f.path, f.mode)
            continue
        changed = write_if_changed(f.path, f.text, f.mode)
        if changed or not f.keep_existing:
            done.append(f"{'wrote' if changed else 'unchanged:'} {f.path}")
    warnings = verify_unit(plan.unit_path) or []
    if plan.service_user:
        done.append(ensure_service_user(plan.state_dir))
    for argv in plan.start:
        try:
            run(argv, timeout=120)
        except CommandError as exc:
            raise InstallError(f"{exc}; see: journalctl -u {unit_name(plan.role)}") from None
    if plan.start:
        done.append(f"enabled and started {unit_name(plan.role)}")
    return done, warnings


def write_if_changed(path: Path, text: str, mode: int) -> bool:
    """Write ``text`` atomically with ``mode``; False when the file already says exactly that."""
    if path.exists() and path.read_text() == text:
        os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def ensure_service_user(data_dir: Path) -> str:
    """Create the system user ``zerogate`` if needed and give it the controller's data dir."""
    try:
        pwd.getpwnam(SERVICE_USER)
        made = ""
    except KeyError:
        shell = next((s for s in NOLOGIN_SHELLS if Path(s).exists()), NOLOGIN_SHELLS[-1])
        try:
            run(useradd_argv(shell), timeout=60)
        except CommandError as exc:
            raise InstallError(f"could not create the system user {SERVICE_USER}: {exc.stderr}") from None
        made = f"created system user {SERVICE_USER}; "
    user = pwd.getpwnam(SERVICE_USER)
    for root, dirs, files in os.walk(data_dir):
        for name in (root, *(os.path.join(root, n) for n in dirs + files)):
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return f"{made}{data_dir} owned by {SERVICE_USER}"
