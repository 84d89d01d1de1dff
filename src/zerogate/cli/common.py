"""What every CLI command shares: output (table or --json), errors, secrets input."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from zerogate.netops.controller_api import ApiError, ControllerError

out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn controller and input errors into one readable line and exit 1."""
    try:
        yield
    except ApiError as exc:
        fail(f"{exc.message} (HTTP {exc.status})")
    except ControllerError as exc:
        fail(str(exc))
    except (ValueError, OSError) as exc:
        fail(str(exc))


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """Print ``data`` (a dict or a list of dicts) as JSON or as a table."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        out.print("(none)")
        return
    if isinstance(data, dict):
        table = Table(show_header=False, title=title, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            table.add_row(key, _cell(value))
        out.print(table)
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    out.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return (
            ", ".join(_cell(v) for v in value)
            if value and not isinstance(value[0], dict)
            else json.dumps(value)
        )
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def read_secret(prompt: str, from_stdin: bool) -> str:
    """A password from one line of stdin (--password-stdin) or a hidden prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            fail("expected the password on standard input")
        return line.rstrip("\n")
    if not sys.stdin.isatty():
        fail("no terminal to ask for the password: pass --password-stdin and pipe it in")
    return getpass.getpass(f"{prompt}: ")


def ask(prompt: str, given: str | None, check: Callable[[str], bool] | None = None) -> str:
    if given:
        return given
    if not sys.stdin.isatty():
        fail(f"{prompt} is needed: pass it as an option")
    value = typer.prompt(prompt)
    if check is not None and not check(value):
        fail(f"{prompt}: {value!r} is not valid")
    return str(value)
