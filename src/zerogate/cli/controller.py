"""``zerogate controller``: create and serve a deployment."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from zerogate.cli.common import emit, errors_to_exit, fail, say, show_audit_verification
from zerogate.controller.config import ConfigError, ControllerSettings, load_settings
from zerogate.controller.deployment import (
    DeploymentError,
    check_deployment,
    init_deployment,
    reset_bootstrap,
    verify_local,
)
from zerogate.store.db import DatabaseError, redact_url

app = typer.Typer(help="Create and run the controller (identity, policy, keys, audit).", no_args_is_help=True)


@app.callback()
def _private_files() -> None:
    """Everything the controller creates (keys, database, anchor) is its own:
    no file it makes is ever readable by others, whatever the caller's umask."""
    os.umask(0o077)


DataDir = typer.Option(Path("/var/lib/zerogate/controller"), "--data-dir", "-d", help="Deployment directory.")


def _listen(value: str | None) -> dict[str, object]:
    if not value:
        return {}
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        fail(f"--listen {value!r}: expected HOST:PORT, e.g. 0.0.0.0:443 or 127.0.0.1:8443")
    return {"listen_host": host.strip("[]"), "listen_port": int(port)}


@app.command()
def init(
    data_dir: Path = DataDir,
    database: str = typer.Option(
        "",
        "--database",
        help="Database URL (default: SQLite in the data dir; or postgresql://USER:PASS@HOST:PORT/DB).",
    ),
    listen: str = typer.Option(None, "--listen", help="HOST:PORT for the HTTPS API (default 0.0.0.0:443)."),
    server_name: list[str] = typer.Option(
        None,
        "--server-name",
        help="DNS name or IP for the server certificate; repeat for several (default: localhost, 127.0.0.1).",
    ),
    public_url: str = typer.Option(
        "",
        "--public-url",
        help="URL devices use, e.g. https://zt.example.com (default from first server name and port).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Create a deployment: CA, server certificate, database, bootstrap code.

    The bootstrap code is printed once; use it with 'zerogate admin bootstrap'
    to create the first admin.
    """
    overrides: dict[str, object] = {
        "database": database or None,
        "public_url": public_url or None,
        **_listen(listen),
    }
    if server_name:
        overrides["server_names"] = server_name
    try:
        result = init_deployment(data_dir.resolve(), overrides)
    except (ConfigError, DeploymentError, DatabaseError) as exc:
        fail(str(exc))
    s = result.settings
    info = {
        "data_dir": str(s.data_dir),
        "database": redact_url(s.database_url),
        "url": s.url,
        "ca_pin": result.ca_pin,
        "bootstrap_code": result.bootstrap_code,
    }
    if as_json:
        emit(info, True)
        return
    say("[green]Deployment created[/] in {}", s.data_dir)
    emit({k: v for k, v in info.items() if k != "bootstrap_code"}, False)
    say(
        "\nOne-time bootstrap code (shown only now, valid 7 days): [bold]{}[/]\n"
        "Start the controller:  zerogate controller run --data-dir {}\n"
        "Create the first admin: zerogate admin bootstrap --url {} --pin {}",
        result.bootstrap_code,
        s.data_dir,
        s.url,
        result.ca_pin,
    )


@app.command()
def run(
    data_dir: Path = DataDir,
    listen: str = typer.Option(
        None, "--listen", help="HOST:PORT to listen on (overrides the config; port 0 picks a free one)."
    ),
    database: str = typer.Option(None, "--database", help="Database URL (overrides the config)."),
    log_level: str = typer.Option(None, "--log-level", help="debug, info, warning or error."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Validate config, keys, file modes, the database and its audit-log triggers, then exit.",
    ),
) -> None:
    """Serve the API over TLS 1.3 until stopped (SIGTERM / Ctrl-C)."""
    from zerogate.controller.server import serve

    try:
        settings = load_settings(
            data_dir.resolve(), {"database": database, "log_level": log_level, **_listen(listen)}
        )
    except ConfigError as exc:
        fail(str(exc))
    problems = check_deployment(settings, audit_triggers=check)
    if check:
        if problems:
            for p in problems:
                say("[red]FAIL[/] {}", p)
            raise typer.Exit(1)
        say(
            "[green]OK[/] configuration in {} is valid (database {})",
            settings.data_dir,
            redact_url(settings.database_url),
        )
        return
    if problems:
        fail("; ".join(problems))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def listening(s: ControllerSettings) -> None:
        say(
            "zerogate controller listening on https://{}:{} (devices use {}); API docs at {}/docs",
            s.listen_host,
            s.listen_port,
            s.url,
            s.url,
        )

    with errors_to_exit():
        try:
            serve(settings, on_listening=listening)
        except (DeploymentError, DatabaseError) as exc:
            fail(str(exc))


@app.command("reset-bootstrap")
def reset_bootstrap_code(data_dir: Path = DataDir, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print a new one-time bootstrap code (only while no admin is active)."""
    try:
        code = reset_bootstrap(load_settings(data_dir.resolve()))
    except (ConfigError, DeploymentError, DatabaseError) as exc:
        fail(str(exc))
    if as_json:
        emit({"bootstrap_code": code}, True)
    else:
        say("New one-time bootstrap code (valid 7 days): [bold]{}[/]", code)


@app.command("audit-verify")
def audit_verify(data_dir: Path = DataDir, as_json: bool = typer.Option(False, "--json")) -> None:
    """Verify the audit log on this host, without the API: the hash chain, every
    record's MAC and this data directory's anchor checkpoints. Exit 1 when broken."""
    try:
        v = verify_local(load_settings(data_dir.resolve()))
    except (ConfigError, DeploymentError, DatabaseError) as exc:
        fail(str(exc))
    if as_json:
        emit(v.as_json(), True)
    else:
        show_audit_verification(v.as_json())
    if not v.ok:
        raise typer.Exit(1)


@app.command()
def join(
    database: str = typer.Option(
        ..., "--database", help="The deployment's PostgreSQL URL: postgresql://USER:PASS@HOST:PORT/DB."
    ),
    data_dir: Path = DataDir,
    name: str = typer.Option(
        ..., "--name", help="This controller's host name (shown in 'admin controller list')."
    ),
    server_name: list[str] = typer.Option(
        None,
        "--server-name",
        help="DNS name or IP for this controller's certificate; repeat for several (default: --name).",
    ),
    listen: str = typer.Option(None, "--listen", help="HOST:PORT for the HTTPS API (default 0.0.0.0:443)."),
    public_url: str = typer.Option("", "--public-url", help="URL devices use (e.g. the load balancer's)."),
    secret_file: Path = typer.Option(
        None, "--secret-file", help="File holding the join secret (default: prompt, not echoed)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Make another controller of an existing deployment (PostgreSQL only).

    The CA comes sealed from the database under a one-time secret made with
    'zerogate admin controller join-secret'; this controller gets a new server
    certificate for its own names, signed by that CA.
    """
    from zerogate.controller.services.controllers import JoinError, join_deployment

    if secret_file is not None:
        try:
            if secret_file.stat().st_size > 4096:
                fail(f"{secret_file} is too large for a join secret")
            secret = secret_file.read_text(errors="replace")
        except OSError as exc:
            fail(f"cannot read {secret_file}: {exc.strerror}")
    else:
        secret = typer.prompt("Join secret", hide_input=True)
    overrides: dict[str, object] = {"database": database, "public_url": public_url or None, **_listen(listen)}
    overrides["server_names"] = server_name or [name]
    try:
        settings = join_deployment(data_dir.resolve(), name, secret, overrides)
    except (ConfigError, DeploymentError, DatabaseError, JoinError) as exc:
        fail(str(exc))
    info = {"data_dir": str(settings.data_dir), "name": name, "database": redact_url(settings.database_url)}
    if as_json:
        emit(info | {"url": settings.url}, True)
        return
    say("[green]Joined[/] the deployment in {} as {}", settings.data_dir, name)
    say("Start it:  zerogate controller run --data-dir {}", settings.data_dir)
