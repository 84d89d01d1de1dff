"""The ``zerogate`` command: one entry point, one sub-command per role.

Sub-commands are imported only when they are used: every role's module pulls in
its own heavy dependencies (SQLAlchemy, the controller, LDAP, WinRM, ...), and
importing all of them cost about 2 s on every ``zerogate`` invocation -- a
daemon start, a one-line ``admin`` command, each test's subprocess. ``--help``
and an unknown command still load them all (to list them and suggest names).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
import typer.main
from typer.core import TyperGroup

from zerogate import __version__

# name -> (module under zerogate.cli, attribute, is a sub-app), in help order (Typer
# lists plain commands before sub-apps).
_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "preflight": ("deploy", "preflight", False),
    "sizing": ("deploy", "sizing", False),
    "connectivity-test": ("deploy", "connectivity_test", False),
    "install": ("install", "install", False),
    "controller": ("controller", "app", True),
    "admin": ("admin", "app", True),
    "connector": ("device", "connector_app", True),
    "gateway": ("device", "gateway_app", True),
    "client": ("client", "app", True),
    "segment": ("segment", "app", True),
    "jit": ("jit", "app", True),
    "firewall": ("firewall", "app", True),
}


def _load(name: str) -> Any:
    """The click command for ``name``, built exactly as an eager ``add_typer``/``command`` would."""
    module, attribute, is_app = _COMMANDS[name]
    target = getattr(importlib.import_module(f"zerogate.cli.{module}"), attribute)
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    if is_app:
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class _LazyGroup(TyperGroup):
    """The top-level group: imports a sub-command's module on first use."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            self.commands[cmd_name] = _load(cmd_name)
        return self.commands.get(cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        return [*_COMMANDS, *(n for n in self.commands if n not in _COMMANDS)]

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in _COMMANDS:  # a typo: load all so the suggestion sees every name
            for name in _COMMANDS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


app = typer.Typer(
    name="zerogate",
    help="Self-hosted zero-trust network access: controller, gateway, connector, client.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_LazyGroup,
)


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
