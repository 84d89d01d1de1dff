"""The API's one error shape, ``{"detail": "<text>"}``, for every refusal.

FastAPI's own 422 handler echoes each offending input back inside the
response. That breaks on input JSON can carry but a response cannot (a lone
surrogate, ``NaN``, ``1e400``: a 500 and a traceback per request) and hands a
100 MB body straight back to its sender. The handler here builds the text
only from where the problem is and pydantic's (or our validators') message;
every piece is made printable and cut to a bounded length, so a response is
small whatever the request was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from zerogate.controller.state import ApiProblem

MAX_PROBLEMS = 10  # a 10,000-item list of bad names still gets a short answer
MAX_PART = 200  # characters of one location or message
_QUOTED = 40  # characters of a bad value a message may quote
_SOURCES = ("body", "query", "path", "header", "cookie")


def printable(text: str, limit: int = MAX_PART) -> str:
    """``text`` with control characters and lone surrogates escaped, cut to ``limit``.

    Escaped rather than dropped, so two different bad inputs never read alike;
    cut because messages of our validators may quote (part of) the input.
    """
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        size += len(piece)
        if size > limit:
            out.append("…")
            break
        out.append(piece)
    return "".join(out)


def _where(error: dict[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"  # its location is a character position, not a field
    parts = [str(p) for p in error.get("loc", ())]
    source = parts[0] if parts and parts[0] in _SOURCES else ""
    fields = parts[1:] if source else parts
    if not fields:
        return source or "request"
    where = ".".join(fields)
    return where if source in ("body", "") else f"{source} parameter {where}"


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "not valid JSON; send one JSON object with Content-Type: application/json"
    if kind == "missing" and tuple(error.get("loc", ())) == ("body",):
        return "a JSON object is required (Content-Type: application/json)"
    msg = str(error.get("msg", "invalid"))
    # Our validators quote a bad value ('10.0.0.1/33' is not ...); a long one is
    # shortened here so the reason after it survives the length cut.
    value = error.get("input")
    if isinstance(value, str) and len(value) > _QUOTED:
        msg = msg.replace(repr(value), repr(value[:_QUOTED]) + "…")
    # pydantic prefixes our validators' ValueError text with its class name.
    return msg.removeprefix("Value error, ")


def describe(errors: Sequence[Any]) -> str:
    """``"field: reason; field: reason"`` from pydantic errors, without their ``input`` or ``ctx``."""
    parts = [
        f"{printable(_where(e), 100)}: {printable(_message(e))}"
        for e in errors[:MAX_PROBLEMS]
        if isinstance(e, dict)
    ]
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return "; ".join(parts) or "the request is not valid"


async def validation_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": describe(exc.errors())}, status_code=422)


async def api_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    return JSONResponse({"detail": printable(exc.message, 2000)}, status_code=exc.status, headers=exc.headers)


async def http_problem(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method, unreadable body) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "the request was refused"
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = (
            "the request body could not be read; send one JSON object with Content-Type: application/json"
        )
    return JSONResponse({"detail": printable(detail, 2000)}, status_code=exc.status_code, headers=exc.headers)
