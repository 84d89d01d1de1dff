"""``zerogate segment directory``: set up the directory the segment server uses.

``init`` creates (OpenLDAP, over LDAP) or renders (``--render ldif|ad``) the
service account, the monitored and protected groups and the ACL that keeps the
protected group's members for the service account; the work is in
:mod:`zerogate.segment.directory_setup` and :mod:`zerogate.segment.directory_render`.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from zerogate.cli.common import JsonOpt, emit, fail, say, visible
from zerogate.netops.files import SecretFileError, read_private_secret
from zerogate.netops.ldap import DirectoryError
from zerogate.segment.directory_render import (
    DEFAULT_SERVICE_NAME,
    SetupInputError,
    SetupSpec,
    check_dn,
    render_ldif,
    render_powershell,
    render_settings,
)
from zerogate.segment.directory_setup import Credentials, Step, apply_setup, plan_setup

app = typer.Typer(help="The LDAP / Active Directory side of the segment server.", no_args_is_help=True)

DEFAULT_PASSWORD_OUT = Path("zerogate-segment-directory.password")


def _read_password(path: Path, option: str) -> str:
    try:
        return read_private_secret(path)
    except SecretFileError as exc:
        fail(f"{option}: {exc}")


@app.command("init")
def init(
    base_dn: str = typer.Option(..., "--base-dn", help="Suffix (or subtree) the entries go under."),
    ldap_url: str | None = typer.Option(None, "--ldap-url", help="ldap://HOST:389 or ldaps://HOST:636."),
    bind_dn: str | None = typer.Option(
        None, "--bind-dn", help="The directory admin that creates the entries."
    ),
    password_file: Path | None = typer.Option(
        None, "--password-file", help="File holding --bind-dn's password."
    ),
    service_account: str = typer.Option(
        DEFAULT_SERVICE_NAME,
        "--service-account",
        help="Name of the segment server's account (cn under --base-dn).",
    ),
    monitored_group: str | None = typer.Option(
        None, "--monitored-group", help="DN of the monitored group (default: cn=zerogate-monitored,BASE)."
    ),
    protected_group: str | None = typer.Option(
        None, "--protected-group", help="DN of the protected group (default: cn=zerogate-protected,BASE)."
    ),
    config_bind_dn: str | None = typer.Option(
        None, "--config-bind-dn", help="cn=config admin, to set the ACL online (else its LDIF is printed)."
    ),
    config_password_file: Path | None = typer.Option(
        None, "--config-password-file", help="File holding --config-bind-dn's password."
    ),
    service_password_file: Path = typer.Option(
        DEFAULT_PASSWORD_OUT,
        "--service-password-file",
        help="New file (0600) for the service account's password.",
    ),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="PEM CA bundle to verify an ldaps:// server."
    ),
    show_password: bool = typer.Option(False, "--show-password", help="Also print the new service password."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the LDIF of what would change; change nothing."
    ),
    render: str | None = typer.Option(
        None, "--render", help="Print, without connecting: 'ldif' (OpenLDAP) or 'ad' (PowerShell for AD)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create the segment server's service account, the monitored and protected groups,
    and the ACL that lets only the service account change the protected group's members.

    Idempotent: a second run changes nothing and says so. Ends with the server's settings.
    """
    try:
        spec = SetupSpec(base_dn, service_account, monitored_group or "", protected_group or "")
    except SetupInputError as exc:
        fail(str(exc))
    if render is not None:
        if render not in ("ldif", "ad"):
            fail("--render takes 'ldif' or 'ad'")
        print(render_ldif(spec) if render == "ldif" else render_powershell(spec), end="")
        return
    if not (ldap_url and bind_dn and password_file):
        fail("--ldap-url, --bind-dn and --password-file are needed (or --render to print instead)")
    if (config_bind_dn is None) != (config_password_file is None):
        fail("give --config-bind-dn and --config-password-file together")
    try:
        admin = Credentials(check_dn(bind_dn, "--bind-dn"), _read_password(password_file, "--password-file"))
        config = None
        if config_bind_dn is not None and config_password_file is not None:
            config_dn = check_dn(config_bind_dn, "--config-bind-dn")
            config = Credentials(config_dn, _read_password(config_password_file, "--config-password-file"))
    except SetupInputError as exc:
        fail(str(exc))
    password_out = Path(os.path.abspath(service_password_file))
    progress = (lambda line: None) if as_json else (lambda line: say("{}", line))
    try:
        plan = plan_setup(ldap_url, admin, spec, config, ca_file)
        creates_account = any(s.kind == "service-account" and s.state == "missing" for s in plan.steps)
        if creates_account and not dry_run:
            if password_out.exists() or password_out.is_symlink():
                fail(f"{password_out} exists; give a new --service-password-file (nothing was changed)")
            if not password_out.parent.is_dir():
                fail(f"{password_out.parent} is not a directory (nothing was changed)")
        if dry_run:
            _print_dry_run(plan.changes, as_json)
            return
        password = apply_setup(plan, ldap_url, admin, password_out, config, ca_file, progress)
    except DirectoryError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {password_out}: {exc.strerror}")
    changed = [s for s in plan.steps if s.state == "created"]
    manual = [s for s in plan.steps if s.state == "manual"]
    settings = render_settings(ldap_url, spec, password_out, ca_file)
    if as_json:
        data = {
            "changed": bool(changed),
            "steps": [{"kind": s.kind, "dn": s.dn, "state": s.state} for s in plan.steps],
            "manual_ldif": "".join(s.ldif for s in manual),
            "password_file": str(password_out) if password else None,
            "settings": settings,
        }
        if show_password and password:
            data["password"] = password
        emit(data, True)
        return
    for step in manual:
        print(step.ldif)
    if not changed and not manual:
        say("[green]Nothing to change[/]: everything is in place.")
    elif not changed:
        say(
            "[yellow]Nothing changed[/]; the ACL is not known to be set: apply the LDIF above (see its comments)."
        )
    if password is not None:
        # print, not say: a path to copy must not be wrapped.
        print(
            f"The service account's password is in {visible(password_out)} (mode 0600); copy it to the server."
        )
        if show_password:
            print(f"password: {password}")
    say("Settings for the segment server (directory_*):")
    print(settings, end="")


def _print_dry_run(changes: list[Step], as_json: bool) -> None:
    if as_json:
        emit(
            {"changes": [{"kind": s.kind, "dn": s.dn, "state": s.state, "ldif": s.ldif} for s in changes]},
            True,
        )
        return
    if not changes:
        say("Nothing to change: everything is in place (dry run).")
        return
    say("Dry run: this LDIF would be applied (nothing was changed):")
    for step in changes:
        print(step.ldif)
