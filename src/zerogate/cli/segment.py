"""``zerogate segment``: the segment server (enroll, run, break-glass, sudoers).

The work lives in :mod:`zerogate.agent` (enrollment, settings, runtime) and
:mod:`zerogate.segment` (the daemon, break-glass); this module parses flags and prints.
"""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from zerogate.agent import enrollment
from zerogate.agent.settings import ConfigError, SegmentSettings, describe, load_settings
from zerogate.agent.state import DeviceIdentity
from zerogate.cli import segment_directory
from zerogate.cli.common import JsonOpt, emit, errors_to_exit, fail, say
from zerogate.cli.device import CheckOpt, ConfigOpt, LogOpt, _serve, setup_logging

DEFAULT_STATE = Path("/var/lib/zerogate/segment")
DEFAULT_USER = "zerogate-segment"  # the controller's default login on an asset

app = typer.Typer(
    help="Segment server: learns how hosts talk and enforces it on their own firewall "
    "(Linux: nftables over SSH; Windows: Windows Firewall over WinRM).",
    no_args_is_help=True,
)
app.add_typer(segment_directory.app, name="directory")


def _sudoers_hint(user: str) -> str:
    from zerogate.segment.ssh import sudoers_line

    return sudoers_line(user)


@app.command()
def enroll(
    install_string: str = typer.Argument(
        ..., help="The line from 'zerogate admin key create --segment-server NAME' (starts with zg1.)."
    ),
    name: str = typer.Option(
        socket.gethostname()[:50],
        "--name",
        help="Name for this device (the controller names it after its segment server).",
    ),
    state_dir: Path = typer.Option(DEFAULT_STATE, "--state-dir", help="Where keys and credentials are kept."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing enrollment in --state-dir (the SSH key pair is kept)."
    ),
    user: str = typer.Option(
        DEFAULT_USER, "--user", help="The assets' dedicated account, for the sudoers line."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Enroll this host as a segment server and make its SSH key pair.

    Prints the public key to put in the dedicated account's authorized_keys on
    every asset, and the sudoers line that account needs (nft, conntrack, ss; nothing else).
    """
    with errors_to_exit():
        try:
            result = enrollment.enroll_segment(install_string, name, state_dir, force)
        except enrollment.EnrollmentError as exc:
            fail(str(exc))
    sudoers = _sudoers_hint(user)
    if as_json:
        emit(result.summary | {"sudoers": sudoers, "ssh_key_created": result.key_created}, True)
        return
    say(
        "[green]Enrolled[/] segment server {} as device {}; state in {}",
        result.summary["name"],
        result.summary["device_id"],
        state_dir,
    )
    say(
        "{} SSH key pair ({}):",
        "New" if result.key_created else "Kept the existing",
        state_dir / enrollment.SSH_KEY,
    )
    say("On every asset, authorize this key for {} (~{}/.ssh/authorized_keys):", user, user)
    print(result.public_key)
    say("and give that account exactly this (visudo -f /etc/sudoers.d/zerogate-segment):")
    print(sudoers)


@app.command()
def sudoers(
    user: str = typer.Option(DEFAULT_USER, "--user", help="The assets' dedicated (non-root) account."),
) -> None:
    """Print the sudoers line the assets' dedicated account needs: exactly nft, conntrack and ss, no password.

    Put it in /etc/sudoers.d/zerogate-segment on each asset (check with visudo -cf).
    An asset managed as root needs none.
    """
    print(_sudoers_hint(user))


@app.command("run")
def run(
    state_dir: Path = typer.Option(None, "--state-dir", help=f"Default {DEFAULT_STATE}."),
    max_ssh_operations: int = typer.Option(
        None,
        "--max-ssh-operations",
        min=1,
        max=1024,
        help="SSH operations at once over all assets (default 32).",
    ),
    log_level: str = LogOpt,
    config: Path = ConfigOpt,
    check: bool = CheckOpt,
) -> None:
    """Run the segment server: follow the controller's assets, act on them over SSH, report.

    Per asset and mode: scan and report an unpinned host key; learn (conntrack,
    read every collect_interval); enforce each rules revision commit-confirmed;
    unprotect. Settings: --config FILE, ZEROGATE_SEGMENT_*, flags (see --check).
    Dials out to the controller only (HTTPS) and to the assets (SSH). Stopping it
    leaves every host as it is; 'zerogate segment break-glass' removes enforcement.
    """
    flags = {"state_dir": state_dir, "log_level": log_level, "max_ssh_operations": max_ssh_operations}
    try:
        settings, path = load_settings(SegmentSettings, config=config, flags=flags)
        directory_config = settings.directory_config()  # reads the password file: fails here, not later
        windows_password = settings.winrm_password() is not None  # the same for WinRM's
    except ConfigError as exc:
        fail(str(exc))
    if check:
        emit(describe(settings, path), False)
        say(
            "[green]OK[/] the segment settings are valid{}{}",
            "" if directory_config else " (no directory)",
            "" if windows_password else " (no WinRM password: Windows assets cannot be managed)",
        )
        raise typer.Exit(0)
    from zerogate.netops.ldap import Directory
    from zerogate.segment.daemon import SegmentDaemon, SshHostOps, source_address
    from zerogate.segment.router import HostOpsRouter, windows_ops
    from zerogate.segment.ssh import Access

    setup_logging(settings.log_level)
    key = _server_key(settings.state_dir)

    def build(ident: DeviceIdentity) -> SegmentDaemon:
        access = Access(
            key,
            settings.state_dir / "assets",
            remote_dir=settings.asset_dir or None,
            kex_algorithms=settings.ssh_kex_algorithms,
        )
        windows, why_not = windows_ops(settings, lambda a: [source_address(a.address, a.ssh_port)])
        return SegmentDaemon(
            ident,
            HostOpsRouter(SshHostOps(access, check_timeout=settings.check_timeout), windows, why_not),
            ssh_access=access,
            max_ssh=settings.max_ssh_operations,
            collect_interval=settings.collect_interval,
            report_interval=settings.report_interval,
            watch_seconds=settings.watch_seconds,
            directory=Directory(directory_config) if directory_config else None,
            sync_interval=settings.directory_sync_interval,
            jit_listen=(settings.jit_listen, settings.jit_cert_file, settings.jit_key_file)
            if settings.jit_listen
            else None,
        )

    _serve("segment", settings.state_dir, build, False, settings.metrics_listen)


def _server_key(state_dir: Path) -> Path:
    key = state_dir / enrollment.SSH_KEY
    if not key.exists():
        fail(f"{key} is missing: run 'zerogate segment enroll' first (it makes the server's SSH key pair)")
    if key.stat().st_mode & 0o077:
        fail(f"{key} is readable by others: chmod 600 it")
    return key


@app.command("break-glass")
def break_glass(
    asset: list[str] = typer.Option(None, "--asset", help="An asset's name (repeat for several)."),
    all_assets: bool = typer.Option(False, "--all", help="Every asset of the cached inventory."),
    state_dir: Path = typer.Option(
        DEFAULT_STATE, "--state-dir", help="The segment server's state directory."
    ),
    parallel: int = typer.Option(32, "--parallel", min=1, max=1024, help="Hosts worked on at once."),
    config: Path = ConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove enforcement (our nftables table; on Windows our firewall rules) from assets, now,
    without the controller.

    Works while the controller is down: it uses the inventory the server saved with
    its last snapshot and the server's own SSH key (Windows assets: the winrm_* settings
    of --config). Run it on the segment server host.
    Each host says removed or failed (and why); exit 1 when any failed. The controller
    still believes the assets are protected: unprotect them there too once it is back.
    """
    if bool(asset) == all_assets:
        fail("give --asset NAME (one or more) or --all")
    from zerogate.deploy.firewall.errors import FirewallApplyError
    from zerogate.segment.breakglass import INVENTORY, WindowsBreakGlass, break_glass_from_inventory
    from zerogate.segment.router import windows_ops
    from zerogate.segment.ssh import Access

    key = _server_key(state_dir)
    remote_dir = None
    try:  # break-glass goes ahead with the defaults; only Windows assets need the settings
        settings, _ = load_settings(SegmentSettings, config=config, flags={})
        windows = WindowsBreakGlass(*windows_ops(settings, lambda a: []))
        remote_dir = settings.asset_dir or None
    except ConfigError as exc:
        windows = WindowsBreakGlass(None, f"the settings are invalid: {exc}")
    access = Access(identity=key, state_dir=state_dir / "assets", remote_dir=remote_dir)
    with errors_to_exit():
        try:
            results = break_glass_from_inventory(
                state_dir / INVENTORY, access, None if all_assets else list(asset), parallel, windows
            )
        except FirewallApplyError as exc:  # the inventory unreadable, the SSH directory unsafe
            fail(str(exc))
    rows = [{"asset": r.name, "result": "removed" if r.ok else "failed", "detail": r.detail} for r in results]
    emit(rows, as_json, ["asset", "result", "detail"])
    if any(not r.ok for r in results):
        raise typer.Exit(1)
