"""What every CLI command shares: output (table or --json), errors, secrets input.

Every value printed comes from a controller (or an old database, or a hostile
server), so it is printed here, never per command, as Rich ``Text``, which is
never parsed for markup: ``[red]``, ``[link=...]`` or an error's
``[... issued by O=Evil Corp,CN=controller]`` print verbatim, and control or
invisible characters (ESC, NUL, bidi overrides) print as escapes like
``\\x1b`` instead of driving the terminal. Messages are built with :func:`say`:
our own markup in the template, values filled in as plain text; :func:`fail`
prints an error without any markup. ``--json`` output is ``json.dumps`` with
ASCII escapes, which escapes every control character.
"""

from __future__ import annotations

import getpass
import json
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from zerogate.model.text import INVISIBLE_CATEGORIES
from zerogate.netops.controller_api import ApiError, ControllerError

out = Console()
err = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table.")


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(value: object) -> str:
    """``str(value)`` with control and invisible characters written as escapes."""
    text = str(value)
    return "".join(_escaped(ch) if unicodedata.category(ch) in INVISIBLE_CATEGORIES else ch for ch in text)


def safe(value: object) -> str:
    """``value`` ready to go into Rich markup: visible, and its own markup escaped."""
    return escape(visible(value))


# Stands for a ``{}`` field while the template's markup is parsed; no template holds NUL.
_FIELD = "\x00"


def fill(template: str, *values: object) -> Text:
    """``template`` (trusted Rich markup with ``{}`` fields) as Text, each field
    replaced by its value as plain text (made :func:`visible`), styled like its place."""
    if _FIELD in template or template.count("{}") != len(values):
        raise ValueError(f"template {template!r} needs exactly {len(values)} '{{}}' fields")
    rendered = Text.from_markup(template.replace("{}", _FIELD))
    filled, start = Text(), 0
    for value in values:
        at = rendered.plain.index(_FIELD, start)
        filled.append_text(rendered[start:at])
        piece = Text(visible(value))
        for span in rendered.spans:
            if span.start <= at < span.end:
                piece.stylize(span.style)
        filled.append_text(piece)
        start = at + 1
    filled.append_text(rendered[start:])
    return filled


def say(template: str, *values: object, console: Console = out) -> None:
    """Print ``template`` (trusted Rich markup with ``{}`` fields) filled with ``values`` as plain text."""
    console.print(fill(template, *values), highlight=False)


def show_audit_verification(r: dict[str, Any]) -> None:
    """The audit-log check as 'zerogate admin audit verify' and 'zerogate
    controller audit-verify' print it (both get the same fields)."""
    if r["ok"]:
        say("[green]OK[/] audit chain intact: {} records, head {}", r["records"], r["head_id"])
    else:
        say("[red]BROKEN[/] audit chain ({} records):", r["records"])
        for p in r["problems"]:
            say("  record {}: {}", p["record_id"], p["problem"])
    if r.get("anchored_from") is None:
        say("anchor: not anchored yet")
    else:
        say(
            "anchor: records from {} carry a MAC ({} older ones chain-checked only); "
            "{} checkpoints, newest at record {}",
            r["anchored_from"],
            r.get("not_anchored", 0),
            r.get("checkpoints", 0),
            r.get("newest_checkpoint", 0),
        )
    for warning in r.get("warnings", []):
        say("[yellow]warning:[/] {}", warning)


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with ``error: message``; it may quote the server or the user, so no markup in it is interpreted."""
    err.print(fill("[bold red]error:[/] {}", message), highlight=False)
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
        # ensure_ascii (the default, spelt out): every control character becomes \\u00XX.
        print(json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=True))
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
            table.add_row(Text(visible(key)), _cell(value))
        out.print(table)
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title)
    for c in cols:
        table.add_column(Text(visible(c)))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    out.print(table)


def _cell(value: Any) -> Text:
    """A table cell as plain Text: Rich parses markup in str cells, never in Text."""
    return Text(visible(_cell_text(value)))


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return (
            ", ".join(_cell_text(v) for v in value)
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
        fail(f"{prompt}: {value!r} is not valid")  # fail() prints it safely
    return str(value)
