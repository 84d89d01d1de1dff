"""``zerogate firewall apply|confirm|rollback|status``: commit-confirmed firewall changes.

Registers its commands on :data:`zerogate.cli.firewall.app`; the work is done by
:mod:`zerogate.deploy.firewall_apply`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from zerogate.cli.common import JsonOpt, emit, fail, fill, out
from zerogate.cli.firewall import app
from zerogate.deploy.firewall_apply import (
    DEFAULT_STATE_DIR,
    MAX_CONFIRM_WINDOW,
    CheckFailedRolledBack,
    FirewallApplyError,
    NftBackend,
    SshBannerCheck,
    StateStore,
    apply_ruleset,
    confirm,
    parse_check_target,
    rollback,
    status,
)

EXIT_ROLLED_BACK = 3

APPLY_HELP = " ".join(
    """Apply a ruleset so that a mistake cannot lock you out.
    Validates it first (nft -c -f; a bad file changes nothing), snapshots the tables it defines,
    applies it atomically (nft -f), then opens a fresh connection to --check-ssh, which must answer
    with an SSH banner. If it does not, the snapshot is restored at once and the exit code is 3.
    Otherwise a detached timer restores the snapshot after --confirm-within seconds unless you run
    'zerogate firewall confirm' (best from a NEW SSH session: that proves you can still get in).
    Only one apply can be pending at a time; 'zerogate firewall status' shows it.""".split()
)

StateDirOpt = typer.Option(
    DEFAULT_STATE_DIR,
    "--state-dir",
    envvar="ZEROGATE_FIREWALL_STATE_DIR",
    help="Where snapshots, the pending marker and the lock live (0700; files 0600).",
)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except CheckFailedRolledBack as exc:
        fail(str(exc), code=EXIT_ROLLED_BACK)
    except (FirewallApplyError, ValueError, OSError) as exc:
        fail(str(exc))


@app.command(
    "apply", help=APPLY_HELP, short_help="Apply a ruleset; it rolls back unless confirmed or if SSH breaks."
)
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
    check_ssh: str = typer.Option(
        "127.0.0.1:22",
        "--check-ssh",
        metavar="HOST:PORT",
        help="SSH server that must answer a fresh connection with its banner once the rules are live.",
    ),
    check_timeout: float = typer.Option(
        5.0, "--check-timeout", min=0.1, max=120, help="Seconds the SSH banner may take."
    ),
    no_check: bool = typer.Option(
        False, "--no-check", help="Skip the management check (only with console access to the host)."
    ),
    state_dir: Path = StateDirOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Apply a ruleset so that a mistake cannot lock you out (see APPLY_HELP)."""
    with _errors():
        check = None if no_check else SshBannerCheck(*parse_check_target(check_ssh), timeout=check_timeout)
        result = apply_ruleset(
            file,
            StateStore(state_dir),
            NftBackend(),
            check,
            None if no_confirm else confirm_within,
            check_timeout=check_timeout,
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


@app.command("confirm")
def confirm_cmd(state_dir: Path = StateDirOpt) -> None:
    """Keep the pending apply: stop its rollback timer. Run it from a new SSH session."""
    with _errors():
        p = confirm(StateStore(state_dir))
    out.print(
        f"confirmed apply {p.id}: {', '.join(p.tables)} stay in place",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("rollback")
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
    state_dir: Path = StateDirOpt,
) -> None:
    """Restore the state from before the pending apply now, and stop its timer."""
    if if_unconfirmed and not token:
        fail("--if-unconfirmed needs --token (see pending.json in the state directory)")
    with _errors():
        message = rollback(StateStore(state_dir), token=token, last=last)
    out.print(
        message or "nothing to roll back: that apply was already confirmed or rolled back",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command("status")
def status_cmd(state_dir: Path = StateDirOpt, as_json: bool = JsonOpt) -> None:
    """Show the pending apply (tables, deadline, timer) and the outcome of the last one."""
    with _errors():
        emit(status(StateStore(state_dir)), as_json)
