"""The portal's pure helpers (portal/web.py): what a refusal may show, how typed fields are
read, the CSRF token, and the templates' escaping; no controller needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from zerogate.controller import schemas as s
from zerogate.controller.portal import web
from zerogate.controller.state import Conflict, NotFound


def test_a_refusal_never_repeats_what_the_form_sent() -> None:
    sent = {"name": "grp", "subnets": "10.1.0.0/24, 10.2.0.0/24"}
    quoted = Conflict("subnet 10.2.0.0/24 overlaps another group's")
    assert web.problem_text(quoted, sent.values()) == web._MESSAGES[409]
    missing = NotFound("no connector group named 'grp'")
    assert web.problem_text(missing, sent.values()) == web._MESSAGES[404]
    plain = Conflict("connector group conflicts with an existing object")
    assert web.problem_text(plain, [*sent.values(), "on"]) == plain.message  # "on" is not in "conflicts"
    assert web.problem_text(NotFound("no group named 'ab'"), ["ab"]) == web._MESSAGES[404]
    with pytest.raises(ValidationError) as caught:
        s.ConnectorGroupCreate.model_validate({"name": "<b>x</b>", "subnets": ["10.1.0.0/24"]})
    text = web.problem_text(caught.value, ["<b>x</b>"])
    assert text == "name: not valid"  # pydantic's reason quotes the name: left out
    with pytest.raises(ValidationError) as caught:
        s.ProvisioningKeyCreate.model_validate({"ttl_minutes": 0})
    assert web.problem_text(caught.value, ["0"]) == "ttl_minutes: Input should be greater than or equal to 1"


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("10.1.0.10:5432", ("10.1.0.10", 5432)),
        (" 10.1.0.10 ", ("10.1.0.10", None)),
        ("10.1.0.10:http", ("10.1.0.10", -1)),
        ("[fd00::1]:443", ("fd00::1", 443)),
        ("fd00::1", ("fd00::1", None)),
        ("[fd00::1]", ("fd00::1", None)),
    ],
)
def test_destinations_as_typed(typed: str, expected: tuple[str, int | None]) -> None:
    assert web.split_destination(typed) == expected


def test_lists_numbers_and_checkboxes() -> None:
    assert web.split_list(" a, b  c,,d ") == ["a", "b", "c", "d"]
    assert web.number({"n": "30"}, "n") == 30 and web.number({"n": ""}, "n") is None
    assert web.number({"n": "3e4"}, "n") == -1  # left for the schema to refuse
    assert web.checked({"snat": "on"}, "snat") and not web.checked({}, "snat")


def test_csrf_token_is_per_session_and_keyed_by_the_deployment() -> None:
    class State:
        ca_key_pem = b"-----BEGIN PRIVATE KEY----- one"

    class Other:
        ca_key_pem = b"-----BEGIN PRIVATE KEY----- two"

    one: Any = State()
    a, b = web.csrf_token(one, "zgt_session-a"), web.csrf_token(one, "zgt_session-b")
    assert a != b and web._CSRF.fullmatch(a)
    assert web.csrf_token(one, "zgt_session-a") == a
    other: Any = Other()
    assert web.csrf_token(other, "zgt_session-a") != a  # another deployment's key


def test_templates_escape_what_they_show() -> None:
    html = web.templates.get_template("error.html").render(status=403, message="<script>x</script>")
    assert "<script>x" not in html and "&lt;script&gt;x" in html


def test_every_template_renders_without_inline_script_or_style() -> None:
    folder = Path(web.__file__).parent / "templates"
    for path in folder.glob("*.html"):
        text = path.read_text()
        assert "<style" not in text and " style=" not in text and "onclick" not in text, path.name
        assert "<script" not in text or 'src="/portal/static/copy.js"' in text, path.name


def test_the_static_files_are_served_from_the_package() -> None:
    assert b"clipboard" in web.static_file("copy.js")
    assert b"font" in web.static_file("portal.css")
