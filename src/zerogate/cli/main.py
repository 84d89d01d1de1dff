"""The ``zerogate`` command: one entry point, one sub-command per role."""

from __future__ import annotations

import typer

from zerogate import __version__
from zerogate.cli import admin, client, controller, deploy, device, firewall, install, jit, segment

app = typer.Typer(
    name="zerogate",
    help="Self-hosted zero-trust network access: controller, gateway, connector, client.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(controller.app, name="controller")
app.add_typer(admin.app, name="admin")
app.add_typer(device.connector_app, name="connector")
app.add_typer(device.gateway_app, name="gateway")
app.add_typer(client.app, name="client")
app.add_typer(segment.app, name="segment")
app.add_typer(jit.app, name="jit")
app.add_typer(firewall.app, name="firewall")
app.command("preflight")(deploy.preflight)
app.command("sizing")(deploy.sizing)
app.command("connectivity-test")(deploy.connectivity_test)
app.command("install")(install.install)


def _version(value: bool) -> None:
    if value:
        print(f"zerogate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """zerogate: reach private apps through connectors that only dial out."""


if __name__ == "__main__":
    app()
