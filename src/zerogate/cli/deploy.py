"""``zerogate preflight``, ``zerogate sizing`` and ``zerogate connectivity-test``.

Registered as top-level commands in :mod:`zerogate.cli.main`. The work lives
in :mod:`zerogate.deploy`; this module parses options and prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.common import JsonOpt, emit, err, fail, out
from zerogate.deploy.checks import Check, any_failed
from zerogate.deploy.connectivity import check_enrolled, check_install_string
from zerogate.deploy.connectivity_segment import (
    CHECK_NAMES,
    DEFAULT_TIMEOUT,
    WINRM_PORT,
    SegmentTargets,
    parse_winrm,
    run_segment_checks,
)
from zerogate.deploy.preflight import run_preflight, summary
from zerogate.deploy.sizing import BENCHMARKS, LIMITS, SizingError, size


class Role(StrEnum):
    controller = "controller"
    gateway = "gateway"
    connector = "connector"
    segment = "segment"


class ConnectivityRole(StrEnum):
    connector = "connector"
    gateway = "gateway"
    segment = "segment"


_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
_STATE_ROOT = Path("/var/lib/zerogate")


def _print_checks(checks: Sequence[Check]) -> None:
    width = max(len(c.title) for c in checks)
    for c in checks:
        label = f"[{_STYLE[c.status]}]{c.status.upper():4}[/]"
        latency = f" ({c.latency_ms:.1f} ms)" if c.latency_ms is not None else ""
        fix = f" [bold]Fix:[/] {escape(c.fix)}" if c.fix and c.status != "pass" else ""
        # One line per check, never re-wrapped, so the output greps and diffs cleanly.
        out.print(
            f"{label}  {escape(c.title.ljust(width))}  {escape(c.detail)}{latency}{fix}", soft_wrap=True
        )


def _report(role: str, checks: Sequence[Check], as_json: bool) -> None:
    counts = summary(checks)
    ok = not any_failed(checks)
    if as_json:
        emit({"role": role, "ok": ok, "summary": counts, "checks": [c.as_dict() for c in checks]}, True)
    else:
        _print_checks(checks)
        verdict = "[green]ready[/]" if ok else "[bold red]not ready[/]"
        out.print(
            f"\n{role}: {verdict} ({counts['pass']} passed, {counts['warn']} warning(s), "
            f"{counts['fail']} failed, {counts['skip']} skipped)",
            soft_wrap=True,
        )
    if not ok:
        raise typer.Exit(1)


def preflight(
    role: Role = typer.Option(..., "--role", help="The role this host is meant to run."),
    install_string: str = typer.Option(
        None,
        "--install-string",
        help="The zg1... line from the admin. Enables the network checks: DNS and TCP to the controller, "
        "TLS interception, the provisioning key, and UDP to every gateway.",
    ),
    state_dir: Path = typer.Option(
        None, "--state-dir", help="Where the role will keep its state (default /var/lib/zerogate/ROLE)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Check that this host can run a role: pass/warn/fail, and the fix.

    Host: x86_64, systemd, root, CPU cores and memory against the
    role's sizing, AES-NI, free disk, a static MAC.

    Network (with --install-string): DNS, TCP and pinned TLS to the
    controller (a pin mismatch means TLS interception), whether the
    key is still usable, and an authenticated UDP probe of every
    gateway.

    Also proxy variables, and other firewall managers (firewalld, ufw,
    Docker, legacy iptables, base chains that drop) with what they
    would block.

    Nothing on the host changes and the key is not used up.
    Exit status 1 if any check fails.
    """
    if install_string and role.value not in ("connector", "gateway"):
        fail(f"a {role.value} is not enrolled with an install string: drop --install-string", code=2)
    directory = state_dir or _STATE_ROOT / role.value
    checks = run_preflight(role.value, install_string, directory, dict(os.environ))
    _report(role.value, checks, as_json)


def sizing(
    role: Role = typer.Option(..., "--role", help="The role to size."),
    users: int = typer.Option(
        None, "--users", help=f"Expected peak concurrent users (1 to {LIMITS['users']:,})."
    ),
    bandwidth: int = typer.Option(
        None, "--bandwidth", help=f"Expected peak bandwidth in Mbit/s (1 to {LIMITS['bandwidth']:,})."
    ),
    assets: int = typer.Option(
        None, "--assets", help=f"Assets (hosts) to protect, for a segment (1 to {LIMITS['assets']:,})."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Recommend cores, memory and disk for a role, with the basis.

    connector, gateway: --users and --bandwidth (Mbit/s).
    controller: --users. segment: --assets.

    The basis quotes the reference sizing row used (connectors,
    network connector hosts, segment servers) and zerogate's own benchmark figures
    (README.md, Benchmarks); zerogate's own assumptions and
    extrapolations are marked as such.
    """
    try:
        result = size(role.value, users=users, bandwidth_mbps=bandwidth, assets=assets)
    except SizingError as exc:
        fail(str(exc), code=2)
    if as_json:
        emit(result.as_dict(), True)
        return
    table = Table(title=f"zerogate sizing: {role.value}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in result.inputs.items():
        table.add_row(name, f"{value:,}" + (" Mbit/s" if name == "bandwidth" else ""))
    if result.instances > 1:
        table.add_row("instances", str(result.instances))
    per = " per instance" if result.instances > 1 else ""
    table.add_row("cores" + per, str(result.cores))
    table.add_row("memory" + per, f"{result.memory_gb} GB")
    table.add_row("disk" + per, f"{result.disk_gb} GB")
    out.print(table)
    out.print("[bold]Basis[/]")
    for line in result.basis:
        out.print(f"  - {escape(line)}", soft_wrap=True)
    if result.notes:
        out.print("[bold]Notes[/]")
        for line in result.notes:
            out.print(f"  - {escape(line)}", soft_wrap=True)
    if role.value == "controller":
        out.print("[bold]Benchmarks[/] (README.md)")
        for b in BENCHMARKS:
            out.print(f"  - {b.name}: {escape(b.workload)}: {escape(b.result)}", soft_wrap=True)


_SKIP_HELP = "; ".join(f"{name}: {what}" for name, what in CHECK_NAMES.items())
_SEGMENT_NOTES = (
    "WinRM: the cached inventory has no OS field yet, so Windows assets are tested only when given with --winrm.",
    "gc and kerberos exist only on Active Directory: against OpenLDAP they fail by design; "
    "add --skip gc --skip kerberos there.",
)


def _connectivity_table(role: str, checks: Sequence[Check]) -> None:
    table = Table(title=f"zerogate connectivity: {role}")
    for column in ("check", "endpoint", "result", "latency", "detail"):
        table.add_column(column, overflow="fold")
    for c in checks:
        detail = c.detail + (f" Fix: {c.fix}" if c.fix and c.status != "pass" else "")
        table.add_row(
            escape(c.title),
            escape(c.endpoint or "-"),
            f"[{_STYLE[c.status]}]{c.status}[/]",
            f"{c.latency_ms:.1f} ms" if c.latency_ms is not None else "-",
            escape(detail),
        )
    out.print(table)


def _segment_checks(
    state_dir: Path | None, config: Path | None, skip: Sequence[str], winrm: Sequence[str], timeout: float
) -> list[Check]:
    """Load the segment settings and run its checks, with a progress bar on a terminal."""
    from rich.progress import Progress

    from zerogate.agent.settings import ConfigError, SegmentSettings, load_settings

    unknown = sorted(set(skip) - set(CHECK_NAMES))
    if unknown:
        fail(f"unknown --skip name; known: {', '.join(CHECK_NAMES)}", code=2)
    try:
        hosts = tuple(parse_winrm(h) for h in winrm)
    except ValueError as exc:
        fail(str(exc), code=2)
    try:
        settings, _ = load_settings(SegmentSettings, config=config, flags={"state_dir": state_dir})
    except ConfigError as exc:
        fail(str(exc), code=2)
    targets = SegmentTargets(
        state_dir=settings.state_dir,
        directory_url=settings.directory_url,
        jit_listen=settings.jit_listen,
        jit_cert_file=settings.jit_cert_file,
        winrm=hosts,
    )
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("testing", total=None)
        return run_segment_checks(
            targets,
            dict(os.environ),
            skip=skip,
            timeout=timeout,
            parallel=settings.max_ssh_operations,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )


def connectivity_test(
    role: ConnectivityRole = typer.Option(
        ConnectivityRole.connector, "--role", help="The local role to test for."
    ),
    state_dir: Path = typer.Option(
        None,
        "--state-dir",
        help="The enrolled role's state (default /var/lib/zerogate/ROLE): device.json, ca.pem, credential.",
    ),
    install_string: str = typer.Option(
        None, "--install-string", help="Test with an install string instead (before enrolling)."
    ),
    config: Path = typer.Option(
        None, "--config", help="segment: the settings file (default /etc/zerogate/segment.toml)."
    ),
    skip: list[str] = typer.Option(
        None, "--skip", help=f"segment: leave a check out (repeatable). Names: {_SKIP_HELP}."
    ),
    winrm: list[str] = typer.Option(
        None,
        "--winrm",
        help=f"segment: a Windows asset, HOST or HOST:PORT (default {WINRM_PORT}); repeatable.",
    ),
    timeout: float = typer.Option(
        DEFAULT_TIMEOUT, "--timeout", min=0.1, max=120, help="segment: seconds each probe may take."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Test every endpoint and port this connector, gateway or segment server needs.

    The controller: TCP, then TLS pinned to the deployment CA, then
    the device credential (with --install-string: the provisioning
    key). For a connector also every gateway: an authenticated UDP
    probe of its probe port (the first port of its range + 1).

    For a segment server also: DNS to every resolver of /etc/resolv.conf,
    the directory (LDAP, LDAPS, global catalog, Kerberos), SSH to every asset
    of the cached inventory, WinRM to the --winrm hosts, and its own HTTPS
    listener (jit_listen). HTTPS to the controller goes through HTTPS_PROXY
    unless NO_PROXY matches.

    Each with its result and latency. Exit status 1 if anything fails.
    """
    env = dict(os.environ)
    if role.value == "segment":
        if install_string:
            fail("a segment server is tested once enrolled: drop --install-string", code=2)
        checks = _segment_checks(state_dir, config, skip or [], winrm or [], timeout)
    else:
        if config or skip or winrm:
            fail("--config, --skip and --winrm apply to --role segment only", code=2)
        if install_string:
            report = check_install_string(
                install_string, role.value, env, probe_udp=role.value == "connector"
            )
        else:
            report = check_enrolled(role.value, state_dir or _STATE_ROOT / role.value, env)
        checks = report.checks
    ok = not any_failed(checks)
    if as_json:
        notes = {"notes": list(_SEGMENT_NOTES)} if role.value == "segment" else {}
        emit({"role": role.value, "ok": ok, "results": [c.as_dict() for c in checks]} | notes, True)
    else:
        _connectivity_table(role.value, checks)
        if role.value == "segment":
            for note in _SEGMENT_NOTES:
                out.print(f"[dim]Note:[/] {escape(note)}", soft_wrap=True)
    if not ok:
        raise typer.Exit(1)
