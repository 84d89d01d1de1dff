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

from zerogate.cli.common import JsonOpt, emit, fail, out
from zerogate.deploy.checks import Check, any_failed
from zerogate.deploy.connectivity import check_enrolled, check_install_string
from zerogate.deploy.preflight import run_preflight, summary
from zerogate.deploy.sizing import BENCHMARKS, LIMITS, SizingError, size


class Role(StrEnum):
    controller = "controller"
    gateway = "gateway"
    connector = "connector"
    segment = "segment"


class TunnelRole(StrEnum):
    connector = "connector"
    gateway = "gateway"


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


def connectivity_test(
    role: TunnelRole = typer.Option(TunnelRole.connector, "--role", help="The local role to test for."),
    state_dir: Path = typer.Option(
        None,
        "--state-dir",
        help="The enrolled role's state (default /var/lib/zerogate/ROLE): device.json, ca.pem, credential.",
    ),
    install_string: str = typer.Option(
        None, "--install-string", help="Test with an install string instead (before enrolling)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Test every endpoint and port this connector or gateway needs.

    The controller: TCP, then TLS pinned to the deployment CA, then
    the device credential (with --install-string: the provisioning
    key). For a connector also every gateway: an authenticated UDP
    probe of its probe port (the first port of its range + 1).

    Each with its result and latency. Exit status 1 if anything fails.
    """
    env = dict(os.environ)
    if install_string:
        report = check_install_string(install_string, role.value, env, probe_udp=role.value == "connector")
    else:
        report = check_enrolled(role.value, state_dir or _STATE_ROOT / role.value, env)
    checks = report.checks
    ok = not any_failed(checks)
    if as_json:
        emit({"role": role.value, "ok": ok, "results": [c.as_dict() for c in checks]}, True)
    else:
        table = Table(title=f"zerogate connectivity: {role.value}")
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
    if not ok:
        raise typer.Exit(1)
