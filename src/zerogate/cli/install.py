"""``zerogate install``: set this host up as a controller, gateway or connector under systemd.

Order matters, so that bad input or a failed check leaves nothing behind:
validate every option, run the preflight (gateway/connector with an install
string), enroll (or, for a controller, create the deployment), and only then
write the environment file, the state directory and the unit, and start it.
Running it again changes nothing that is already right; an existing
enrollment or deployment is kept unless ``--force``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape

from zerogate.cli.common import emit, err, errors_to_exit, fail, out
from zerogate.deploy.install import InstallError, apply_install, plan_install, under
from zerogate.deploy.systemd import Role, UnitSpec, check_path, default_state_dir, env_file_path, unit_name

_HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))


class InstallRole(StrEnum):
    controller = "controller"
    gateway = "gateway"
    connector = "connector"


def _usage(message: str) -> NoReturn:
    fail(message, code=2)


def _zerogate_program(given: Path | None) -> Path:
    if given is not None:
        return given
    # The zerogate next to the running interpreter (a venv or pipx install), else the one on PATH.
    found = shutil.which("zerogate", path=str(Path(sys.executable).parent)) or shutil.which("zerogate")
    if found is None:
        _usage("cannot find the zerogate program: pass --exec-path /path/to/zerogate")
    return Path(os.path.abspath(found))


def _systemd_booted() -> bool:
    return Path("/run/systemd/system").is_dir()


def _run_preflight(
    role: str, install_string: str | None, state_dir: Path, ignore: Sequence[str]
) -> list[Any]:
    """Run the preflight; stop the install on a failure that is not ignored."""
    from zerogate.deploy.preflight import run_preflight  # only when needed: it is slow to import

    checks = run_preflight(role, install_string, state_dir, dict(os.environ))
    known = {c.id for c in checks}
    for name in ignore:
        if name not in known:
            err.print(
                f"[yellow]warning:[/] --ignore-preflight {name}: no such check "
                f"(checks: {', '.join(sorted(known))})",
                highlight=False,
            )
    blocking = [c for c in checks if c.status == "fail" and c.id not in ignore]
    for c in checks:
        if c.status in ("fail", "warn"):
            ignored = " (ignored)" if c.status == "fail" and c.id in ignore else ""
            fix = f" Fix: {c.fix}" if c.fix else ""
            err.print(
                f"preflight {c.status}{ignored}: {c.id}: {escape(c.detail)}{escape(fix)}", highlight=False
            )
    if blocking:
        names = " ".join(f"--ignore-preflight {c.id}" for c in blocking)
        fail(
            f"preflight failed ({', '.join(c.id for c in blocking)}); nothing was installed. Fix it, or pass {names}"
        )
    return checks


def _controller_deployment(
    data_dir: Path, listen: str | None, server_names: list[str] | None, public_url: str | None
) -> tuple[int, dict[str, Any] | None]:
    """(listen port, init summary or None when a deployment already exists)."""
    from zerogate.controller.config import CONFIG_NAME, ConfigError, load_settings
    from zerogate.controller.deployment import DeploymentError, init_deployment
    from zerogate.store.db import DatabaseError

    try:
        if (data_dir / CONFIG_NAME).exists():
            return load_settings(data_dir).listen_port, None
        overrides: dict[str, Any] = {}
        if listen:
            host, sep, port = listen.rpartition(":")
            if not sep or not port.isdigit():
                _usage(f"--listen {listen!r}: expected HOST:PORT, e.g. 0.0.0.0:443")
            overrides |= {"listen_host": host.strip("[]"), "listen_port": int(port)}
        if server_names:
            overrides["server_names"] = server_names
        if public_url:
            overrides["public_url"] = public_url
        result = init_deployment(data_dir, overrides)
    except (ConfigError, DeploymentError, DatabaseError) as exc:
        fail(str(exc))
    return result.settings.listen_port, {
        "url": result.settings.url,
        "ca_pin": result.ca_pin,
        "bootstrap_code": result.bootstrap_code,
    }


def _why_not_start(no_start: bool, prefix: Path, unenrolled: bool, role: str) -> str:
    """Why the service is left stopped (empty: start it)."""
    if no_start:
        return "--no-start"
    if prefix != Path("/"):
        return "--prefix is not /"
    if not _systemd_booted():
        return "systemd is not running on this host"
    if unenrolled:
        return f"this {role} is not enrolled yet"
    return ""


def install(
    role: InstallRole = typer.Option(
        ..., "--role", help="What this host runs: controller, gateway or connector."
    ),
    install_string: str = typer.Option(
        None,
        "--install-string",
        help="gateway/connector: the zg1... line from 'zerogate admin key create'. With it, install runs the "
        "preflight and enrolls this host (keys are made here; only public halves leave it).",
    ),
    name: str = typer.Option(
        socket.gethostname()[:50], "--name", help="Device name to enroll under (default: host name)."
    ),
    state_dir: Path = typer.Option(
        None,
        "--state-dir",
        help="Keys, credential and state; for a controller its data dir (default /var/lib/zerogate/ROLE).",
    ),
    interface: str = typer.Option(
        None, "--interface", help="gateway/connector: WireGuard interface name (default zg-gw / zg-cn)."
    ),
    listen_port: int = typer.Option(
        None, "--listen-port", min=1, max=65535, help="connector: local WireGuard UDP port (default 51820)."
    ),
    listen: str = typer.Option(
        None, "--listen", help="controller, new deployment: HOST:PORT of the HTTPS API (default 0.0.0.0:443)."
    ),
    server_name: list[str] = typer.Option(
        None,
        "--server-name",
        help="controller, new deployment: DNS name or IP for its certificate; repeatable.",
    ),
    public_url: str = typer.Option(
        None,
        "--public-url",
        help="controller, new deployment: the URL devices use, e.g. https://zt.example.com.",
    ),
    prefix: Path = typer.Option(
        Path("/"),
        "--prefix",
        help="Install into this root instead of / (for images and tests); never starts anything.",
    ),
    unit_dir: Path = typer.Option(
        Path("/etc/systemd/system"), "--unit-dir", help="Where the unit goes (inside --prefix)."
    ),
    exec_path: Path = typer.Option(
        None,
        "--exec-path",
        help="The zerogate program the unit runs (default: the one running this command).",
    ),
    ignore_preflight: list[str] = typer.Option(
        None, "--ignore-preflight", help="Go ahead although this preflight check fails (its id); repeatable."
    ),
    no_start: bool = typer.Option(False, "--no-start", help="Write and enroll, but do not enable or start."),
    force: bool = typer.Option(False, "--force", help="Replace an existing enrollment in the state dir."),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Install a role as the systemd service zerogate-ROLE, ready to start.

    \b
    Writes, inside --prefix:
      /etc/systemd/system/zerogate-ROLE.service  0644, hardened unit
      /etc/zerogate/ROLE.env                     0600, proxy settings (kept)
      /var/lib/zerogate/ROLE                     0700, keys and state

    gateway/connector with --install-string: runs the preflight first (a
    failed check stops the install unless --ignore-preflight ID), then
    enrolls this host. controller: creates the deployment if the data dir
    has none and prints the one-time bootstrap code; it runs as the system
    user 'zerogate'.

    Then 'systemctl daemon-reload' and 'systemctl enable --now
    zerogate-ROLE', except with --no-start or --prefix, or when systemd is
    not running: then it prints the exact commands. Safe to run again.
    """
    r: Role = role.value
    network = r != "controller"
    # -- 1. validate everything before touching anything -----------------------------------------
    if install_string and not network:
        _usage("a controller is not enrolled with an install string: drop --install-string")
    if network and (listen or server_name or public_url):
        _usage("--listen, --server-name and --public-url are for --role controller")
    if listen_port is not None and r != "connector":
        _usage("--listen-port is for --role connector (a controller takes --listen HOST:PORT)")
    if not prefix.is_absolute() or not prefix.is_dir():
        _usage(f"--prefix {prefix}: expected an existing directory given as an absolute path")
    system_state = state_dir or default_state_dir(r)
    program = _zerogate_program(exec_path)
    try:
        check_path("--state-dir", system_state)
        check_path("--unit-dir", unit_dir)
        check_path("--exec-path", program)
        spec = UnitSpec(
            role=r,
            zerogate=program,
            state_dir=system_state,
            env_file=env_file_path(r),
            interface=interface or "",
            listen_port=(listen_port or 51820) if r == "connector" else None,
        )
    except ValueError as exc:
        _usage(str(exc))
    if any(program.is_relative_to(p) for p in _HIDDEN_BY_PROTECT_HOME):
        _usage(
            f"{program} is under {program.parents[-2]}, which the unit hides (ProtectHome=yes): install zerogate "
            "elsewhere (e.g. /opt/zerogate or pipx --global) or pass --exec-path"
        )
    if prefix == Path("/") and not os.access(program, os.X_OK):
        _usage(f"--exec-path {program}: not an executable file")
    if install_string:
        from zerogate.pki.install_string import InvalidInstallString, parse_install_string

        try:
            parse_install_string(install_string)
        except InvalidInstallString as exc:
            _usage(f"--install-string: {exc}")
    host_state = under(prefix, system_state)
    unit_path = under(prefix, unit_dir) / unit_name(r)
    env_path = under(prefix, spec.env_file)
    done: list[str] = []
    result: dict[str, Any] = {
        "role": r,
        "unit": str(unit_path),
        "env_file": str(env_path),
        "state_dir": str(host_state),
    }

    # -- 2. preflight, 3. enrollment / deployment ----------------------------------------------
    enrolled = (host_state / "device.json").exists()
    if network and install_string:
        # A kept enrollment does not use the key again (it may well be spent): check the host only.
        keep = enrolled and not force
        checks = _run_preflight(r, None if keep else install_string, host_state, ignore_preflight or [])
        result["preflight"] = [c.as_dict() for c in checks]
    if network and install_string and (force or not enrolled):
        from zerogate.cli.device import enroll_device

        with errors_to_exit():
            summary = enroll_device(r, install_string, name, host_state, force)
        result["enrollment"] = summary
        done.append(f"enrolled as {r} {summary['name']} (device {summary['device_id']})")
        enrolled = True
    elif network and enrolled:
        done.append(f"kept the existing enrollment in {host_state} (--force replaces it)")
    if not network:
        port, created = _controller_deployment(host_state, listen, server_name, public_url)
        spec = UnitSpec(r, program, system_state, spec.env_file, listen_port=port)
        result["deployment"] = created
        ignored = (
            " (--listen, --server-name and --public-url only shape a new one)"
            if listen or server_name or public_url
            else ""
        )
        done.append(
            "created the deployment" if created else f"kept the existing deployment in {host_state}{ignored}"
        )

    # -- 4. files, 5. start ------------------------------------------------------------------------
    why_not = _why_not_start(no_start, prefix, network and not enrolled, r)
    try:
        plan = plan_install(
            spec, prefix=prefix, unit_dir=unit_dir, environ=os.environ, start=not why_not, enrolled=enrolled
        )
        steps, warnings = apply_install(plan)
    except InstallError as exc:
        fail(str(exc))
    done += steps
    result |= {"verify": warnings, "started": not why_not, "next": list(plan.next_steps), "done": done}

    if as_json:
        emit(result, True)
        return
    for line in done:
        out.print(f"[green]✓[/] {escape(line)}", highlight=False)
    for line in warnings:
        out.print(f"[yellow]systemd-analyze:[/] {escape(line)}", highlight=False)
    created = result.get("deployment")
    if created:
        out.print(
            f"\nOne-time bootstrap code (shown only now, valid 7 days): [bold]{created['bootstrap_code']}[/]\n"
            f"Create the first admin: zerogate admin bootstrap --url {created['url']} --pin {created['ca_pin']}",
            highlight=False,
        )
    if why_not:
        out.print(f"\nNot started ({why_not}). To start it:", highlight=False)
        for command in plan.next_steps:
            out.print(f"  {escape(command)}", highlight=False)
