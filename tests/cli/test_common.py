"""What every CLI command prints through: errors and messages keep the text
they are given (brackets included) and never let it drive the terminal."""

from __future__ import annotations

import pytest
import typer

from zerogate.cli.common import fail, fill, say
from zerogate.netops.controller_api import TLSInterceptionSuspected


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_fail_prints_an_intercepted_tls_message_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    detail = (
        "the CA certificate served at /v1/ca has a different pin; "
        "the server's certificate was issued by O=Evil Corp,CN=controller"
    )
    message = str(TLSInterceptionSuspected("https://zt.example.com", "sha256/pin", "sha256/seen", detail))
    assert f"[{detail}]" in message
    with pytest.raises(typer.Exit) as exited:
        fail(message)
    assert exited.value.exit_code == 1
    assert one_line(capsys.readouterr().err) == one_line(f"error: {message}")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("[bold]x[/bold] [link=https://evil.example]click[/link]", None),
        ("[TLS handshake failed: x; issued by O=Evil Corp,CN=controller]", None),
        ("trailing\\", None),  # must not escape the template's closing tag
        ("esc\x1b[2J nul\x00", "esc\\x1b[2J nul\\x00"),
    ],
    ids=["markup", "brackets", "trailing-backslash", "control"],
)
def test_say_and_fail_print_values_as_plain_text(
    capsys: pytest.CaptureFixture[str], value: str, shown: str | None
) -> None:
    say("[green]Account {} is active.[/] next: {}", value, "done")
    assert one_line(capsys.readouterr().out) == one_line(f"Account {shown or value} is active. next: done")
    with pytest.raises(typer.Exit):
        fail(value, code=2)
    assert one_line(capsys.readouterr().err) == one_line(f"error: {shown or value}")


def test_fill_styles_a_value_like_its_place_in_the_template() -> None:
    text = fill("[green]A {} B[/] {}", "[red]v", "w")
    assert text.plain == "A [red]v B w"
    assert {(s.start, s.end, str(s.style)) for s in text.spans} >= {(2, 8, "green")}
    assert not any(s.start >= 11 for s in text.spans)  # the second value is outside the green
    with pytest.raises(ValueError, match="fields"):
        fill("{} and {}", "only one")
