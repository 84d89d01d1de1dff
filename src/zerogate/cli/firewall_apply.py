"""``zerogate firewall apply|confirm|rollback|status``: commit-confirmed firewall changes.

Parses flags and prints; the work is done by :mod:`zerogate.deploy.firewall.commit`
against this host or an SSH target (``--target ssh://USER@HOST[:PORT][/DIR]`` with
``--known-hosts`` holding its pinned host key). :mod:`zerogate.cli.firewall`
registers the commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from zerogate.cli.common import JsonOpt, emit, fail, fill, out
from zerogate.deploy.firewall import (
    DEFAULT_STATE_DIR,
    MAX_CONFIRM_WINDOW,
    CheckFailedRolledBack,
    FirewallApplyError,
    RollbackLeftToTarget,
    StateStore,
    Target,
    apply_ruleset,
    confirm,
    open_target,
    rollback,
    status,
)
from zerogate.deploy.firewall.checks import ManagementCheck, SshBannerCheck, parse_check_target

EXIT_ROLLED_BACK = 3

APPLY_HELP = " ".join(
    """Apply a ruleset so that a mistake cannot lock you out.
    Validates it first (nft -c -f; a bad file changes nothing), snapshots the tables it defines,
    arms the rollback on the target, applies it atomically (nft -f), then checks the management
    path over a fresh connection: --check-ssh must answer with an SSH banner (default 127.0.0.1:22
    here; for an ssh:// --target a fresh SSH login to it). If that fails, the snapshot is restored
    at once and the exit code is 3. Otherwise the armed rollback restores the snapshot after
    --confirm-within seconds unless you run 'zerogate firewall confirm' (best from a NEW SSH
    session: that proves you can still get in). With --target ssh://USER@HOST:PORT/DIR the
    rollback is a systemd timer or a detached process on that host, so it fires even if this
    side dies or loses the connection (PORT and DIR are optional). Only one apply can be pending per target at a time;
    'zerogate firewall status' shows it.""".split()
)

StateDirOpt = typer.Option(
    DEFAULT_STATE_DIR,
    "--state-dir",
    envvar="ZEROGATE_FIREWALL_STATE_DIR",
    help="Where snapshots, the pending marker and the lock live (0700; files 0600). An SSH target "
    "keeps its pending marker in targets/USER@HOST-PORT below it.",
)
TargetOpt = typer.Option(
    "local",
    "--target",
    metavar="TARGET",
    help="local, or ssh://USER@HOST:PORT/DIR for another host over SSH (port 22 unless given; DIR "
    "holds the snapshots there, default /var/lib/zerogate/firewall).",
)
KnownHostsOpt = typer.Option(
    None,
    "--known-hosts",
    metavar="FILE",
    help="ssh:// target: known_hosts file with its pinned host key (nothing else is trusted).",
)
IdentityOpt = typer.Option(
    None, "--identity", metavar="FILE", help="ssh:// target: private key to log in with."
)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RollbackLeftToTarget as exc:
        fail(f"{exc}; 'zerogate firewall status' with the same --target shows it", code=EXIT_ROLLED_BACK)
    except CheckFailedRolledBack as exc:
        fail(str(exc), code=EXIT_ROLLED_BACK)
    except (FirewallApplyError, ValueError, OSError) as exc:
        fail(str(exc))


def _open(
    target: str, state_dir: Path, known_hosts: Path | None, identity: Path | None
) -> tuple[Target, StateStore]:
    try:
        return open_target(target, state_dir, known_hosts, identity)
    except ValueError as exc:
        fail(str(exc))


def apply_cmd(
    file: Path = typer.Argument(..., help="nftables ruleset file, e.g. from 'zerogate firewall render'."),
    confirm_within: float = typer.Option(
        60.0,
        "--confirm-within",
        min=1,
        max=MAX_CONFIRM_WINDOW,
        help="Seconds until the automatic rollback unless 'zerogate firewall confirm' runs.",
    ),
    no_confirm: bool = typer.Option(
        False, "--no-confirm", help="No rollback timer (automation); the management check still runs."
    ),
    check_ssh: str | None = typer.Option(
        None,
        "--check-ssh",
        metavar="HOST:PORT",
        help="SSH server that must answer a fresh connection with its banner once the rules are live "
        "(default: 127.0.0.1:22 here; a fresh SSH login to an ssh:// --target).",
    ),
    check_timeout: float = typer.Option(
        5.0, "--check-timeout", min=0.1, max=120, help="Seconds the SSH banner (or login) may take."
    ),
    no_check: bool = typer.Option(
        False, "--no-check", help="Skip the management check (only with console access to the host)."
    ),
    target: str = TargetOpt,
    known_hosts: Path | None = KnownHostsOpt,
    identity: Path | None = IdentityOpt,
    state_dir: Path = StateDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Apply a ruleset so that a mistake cannot lock you out (see APPLY_HELP)."""
    tgt, store = _open(target, state_dir, known_hosts, identity)
    with _errors():
        check: ManagementCheck | None
        if no_check:
            check = None
        elif check_ssh is not None:
            check = SshBannerCheck(*parse_check_target(check_ssh), timeout=check_timeout)
        else:
            check = tgt.default_check(check_timeout)
        result = apply_ruleset(
            file, store, tgt, check, None if no_confirm else confirm_within, check_timeout=check_timeout
        )
    if as_json:
        emit(vars(result), True)
        return
    if result.confirm_within is None:
        head = "[green]applied[/] (no confirm timer)"
    else:
        head = (
            f"[green]applied[/]; run 'zerogate firewall confirm' within {result.confirm_within:g} s "
            "or it rolls back"
        )
    out.print(
        fill(
            head + "\n  tables: {}\n  check: {}\n  previous state: {}",
            ", ".join(result.tables),
            result.check,
            result.snapshot_file,
        ),
        highlight=False,
        soft_wrap=True,
    )


def confirm_cmd(
    target: str = TargetOpt,
    known_hosts: Path | None = KnownHostsOpt,
    identity: Path | None = IdentityOpt,
    state_dir: Path = StateDirOpt,
) -> None:
    """Keep the pending apply: cancel its rollback. Run it from a new SSH session."""
    tgt, store = _open(target, state_dir, known_hosts, identity)
    with _errors():
        p = confirm(store, tgt)
    out.print(
        f"confirmed apply {p.id}: {', '.join(p.tables)} stay in place",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def rollback_cmd(
    last: bool = typer.Option(
        False, "--last", help="Nothing pending: restore the state from before the last apply anyway."
    ),
    if_unconfirmed: bool = typer.Option(
        False,
        "--if-unconfirmed",
        help="Only if the apply with --token is still unconfirmed; otherwise do nothing (exit 0). "
        "For schedulers such as at(1).",
    ),
    token: str = typer.Option(None, "--token", help="Token of the pending apply (in pending.json)."),
    target: str = TargetOpt,
    known_hosts: Path | None = KnownHostsOpt,
    identity: Path | None = IdentityOpt,
    state_dir: Path = StateDirOpt,
) -> None:
    """Restore the state from before the pending apply now, and cancel its armed rollback."""
    if if_unconfirmed and not token:
        fail("--if-unconfirmed needs --token (see pending.json in the state directory)")
    tgt, store = _open(target, state_dir, known_hosts, identity)
    with _errors():
        message = rollback(store, tgt, token=token, last=last)
    out.print(
        message or "nothing to roll back: that apply was already confirmed or rolled back",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def status_cmd(
    target: str = TargetOpt,
    known_hosts: Path | None = KnownHostsOpt,
    identity: Path | None = IdentityOpt,
    state_dir: Path = StateDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show the pending apply (tables, deadline, rollback) and the outcome of the last one."""
    tgt, store = _open(target, state_dir, known_hosts, identity)
    with _errors():
        emit(status(store, tgt), as_json)
