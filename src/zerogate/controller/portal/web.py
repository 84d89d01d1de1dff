"""What every portal page shares: the session cookie, CSRF, headers, templates and API calls.

Session: the portal signs in through the API's own ``/v1/auth/login`` handler
(:func:`zerogate.controller.auth.login`: password check, throttle, TOTP, audit,
metrics) and keeps the session token it issues in the cookie :data:`COOKIE`
(``Secure; HttpOnly; SameSite=Strict; Path=/portal``). A ``__Host-`` name would
need ``Path=/``, which would send the token to every API route as well; the
``__Secure-`` prefix still makes browsers refuse the cookie from plain HTTP.
Every request resolves the token exactly as a bearer token is resolved
(:func:`~zerogate.controller.auth.resolve_credential`), so a portal session
expires and is revoked as an API session is.

CSRF: each form carries :func:`csrf_token`, an HMAC of the session token under a
key derived from the controller's CA key (the same on every controller of a
deployment, unknown outside it); every POST is checked against it and against
``Sec-Fetch-Site``/``Origin`` before anything runs. A refusal is a 403 that
changes nothing.

Actions: :meth:`Session.api` calls the API route's own handler (found by method and
path) with the signed-in admin, so validation, services, audit records and
config revisions are exactly the API's. :func:`problem_text` shows its refusal
without repeating what the form sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.datastructures import FormData

from zerogate.controller.api import (
    accounts,
    applications,
    audit,
    connector_groups,
    connectors,
    devices,
    flows,
    gateways,
    groups,
    policies,
    pool,
    provisioning_keys,
    segment,
    segment_servers,
)
from zerogate.controller.auth import client_source, resolve_credential
from zerogate.controller.state import ApiProblem, ControllerState, Principal
from zerogate.model.web import is_cross_site

COOKIE = "__Secure-zgportal"
PATH = "/portal"
SIGN_IN = f"{PATH}/sign-in"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000",
}
MAX_FIELDS = 32
MAX_FIELD = 4096  # characters of one form value
_TOKEN = re.compile(r"zgt_[A-Za-z0-9_-]{20,100}")
API_MODULES = (accounts, applications, audit, connector_groups, connectors, devices, flows, gateways, groups,
               policies, pool, provisioning_keys, segment, segment_servers)  # fmt: skip
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")

templates = Environment(
    loader=PackageLoader("zerogate.controller.portal", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


class NotSignedIn(Exception):
    """No valid admin session: the page answers with a redirect to the sign-in page."""


class Refused(Exception):
    """A request refused before anything ran (bad CSRF token, cross-site, bad form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def with_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    return response


def error_page(status: int, message: str) -> HTMLResponse:
    html = templates.get_template("error.html").render(status=status, message=message)
    return HTMLResponse(html, status_code=status)


class PortalRoute(APIRoute):
    """A portal route: every answer gets :data:`HEADERS`; a missing session becomes a
    redirect to the sign-in page, a refusal an error page (never JSON, never the input)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            response: Response
            try:
                response = await original(request)
            except NotSignedIn:
                response = RedirectResponse(SIGN_IN, status_code=303)
            except Refused as exc:
                response = error_page(exc.status, exc.message)
            except ApiProblem as exc:  # e.g. an unknown query parameter (limits.known_query_only)
                response = error_page(exc.status, _fixed(exc.status))
            except RequestValidationError:  # a query parameter out of its bounds
                response = error_page(422, _fixed(422))
            return with_headers(response)

        return handler


def state_of(request: Request) -> ControllerState:
    state: ControllerState = request.app.state.zg
    return state


@functools.lru_cache(maxsize=8)
def _csrf_key(ca_key_pem: bytes) -> bytes:
    """The CSRF key: derived from the CA key, so every controller of a deployment has it
    (without one, e.g. in a bare test state, a key of this process)."""
    seed = ca_key_pem or secrets.token_bytes(32)
    return hashlib.sha256(b"zerogate portal csrf\0" + seed).digest()


def csrf_token(state: ControllerState, session_token: str) -> str:
    mac = hmac.new(_csrf_key(state.ca_key_pem), session_token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def same_origin(request: Request) -> None:
    """Refuse a cross-site POST (:func:`zerogate.model.web.is_cross_site`)."""
    if is_cross_site(request.headers.get):
        raise Refused(403, "cross-site request refused")


async def read_form(request: Request) -> dict[str, str]:
    """The posted form as plain strings (the last value of a repeated field), bounded."""
    try:
        form: FormData = await request.form(max_files=0, max_fields=MAX_FIELDS)
    except Exception:
        raise Refused(400, "the form could not be read") from None
    out: dict[str, str] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or len(value) > MAX_FIELD or len(name) > 64:
            raise Refused(400, "a form field is too long or not text")
        out[name] = value
    return out


class Session:
    """The signed-in admin of one request: who, the token (for CSRF) and the state."""

    def __init__(self, request: Request, who: Principal, token: str) -> None:
        self.request, self.who, self.token = request, who, token
        self.state = state_of(request)
        self.csrf = csrf_token(self.state, token)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(template).render(
            csrf=self.csrf, admin=self.who.name, page=template.removesuffix(".html"), **context
        )
        return HTMLResponse(html, status_code=status)

    async def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the API route ``method path`` as this admin (see the module)."""
        endpoint = _endpoint(method, path)
        return await endpoint(admin=self.who, state=self.state, **kwargs)


async def signed_in(request: Request) -> Session:
    """The admin session of this request, or :class:`NotSignedIn`."""
    token = request.cookies.get(COOKIE, "")
    if not _TOKEN.fullmatch(token):
        raise NotSignedIn
    state = state_of(request)
    try:
        who = await resolve_credential(state, f"Bearer {token}", client_source(request))
    except ApiProblem:
        raise NotSignedIn from None
    if who.kind != "admin":
        raise NotSignedIn
    return Session(request, who, token)


async def posted(request: Request) -> tuple[Session, dict[str, str]]:
    """A POST from a signed-in admin: origin and CSRF token checked before anything runs."""
    same_origin(request)
    session = await signed_in(request)
    form = await read_form(request)
    sent = form.pop("csrf", "")
    if not _CSRF.fullmatch(sent) or not hmac.compare_digest(sent, session.csrf):
        raise Refused(403, "the form's security token is missing or wrong; reload the page and try again")
    return session, form


def _endpoint(method: str, path: str) -> Callable[..., Awaitable[Any]]:
    """The handler of the API route ``method path``, from the routers of the API modules
    (the app's own route list holds included routers, not their routes)."""
    found = _api_routes().get((method, path))
    if found is None:
        raise LookupError(f"no API route {method} {path}")
    return found


@functools.cache
def _api_routes() -> dict[tuple[str, str], Callable[..., Awaitable[Any]]]:
    table: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {}
    for module in API_MODULES:
        for route in module.router.routes:
            if isinstance(route, APIRoute):
                for method in route.methods or ():
                    table[(method, route.path)] = route.endpoint
    return table


_MESSAGES = {
    400: "the request was not valid",
    401: "sign in again",
    403: "not allowed",
    404: "no such object",
    409: "that conflicts with an existing object (name in use, overlap, or still referenced)",
    413: "the request is too large",
    422: "the request was not valid",
    429: "too many attempts; try again later",
}


def _fixed(status: int) -> str:
    return _MESSAGES.get(status, "the request failed")


def problem_text(exc: ApiProblem | ValidationError, sent: Iterable[str]) -> str:
    """What went wrong, without repeating the input: the API's message when it quotes none
    of the values sent, else a fixed text for its status; for a validation error, each
    field's name with pydantic's reason, or just "not valid" where the reason quotes input."""
    # Each value sent (and each part of a list typed in one field) as a whole token: a
    # checkbox's "on" does not hide "conflicts", but a quoted name is found.
    found = [
        re.compile(rf"(?<![A-Za-z0-9]){re.escape(p)}(?![A-Za-z0-9])")
        for v in sent
        for p in {v.strip(), *split_list(v)}
        if len(p) >= 2
    ]

    def clean(text: str) -> bool:
        return text.isprintable() and len(text) <= 300 and not any(f.search(text) for f in found)

    if isinstance(exc, ValidationError):
        parts = []
        for e in exc.errors(include_input=False)[:5]:
            where = ".".join(str(p) for p in e["loc"]) or "form"
            parts.append(f"{where}: {e['msg']}" if clean(e["msg"]) else f"{where}: not valid")
        text = "; ".join(parts)
        return text if clean(text) else _fixed(422)
    return exc.message if clean(exc.message) else _fixed(exc.status)


def split_list(value: str) -> list[str]:
    """Names or addresses typed as one field: separated by commas or white space."""
    return [part for part in re.split(r"[,\s]+", value.strip()) if part]


_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]{2,45})\](?::([0-9]{1,5}))?")


def split_destination(text: str) -> tuple[str, int | None]:
    """``10.1.0.10:5432``, ``10.1.0.10``, ``[fd00::1]:443`` or ``fd00::1`` as (address, port);
    a port that is not a number becomes -1, for the schema to refuse."""
    text = text.strip()
    if m := _BRACKETED.fullmatch(text):
        return m.group(1), int(m.group(2)) if m.group(2) else None
    if text.count(":") == 1:
        address, port = text.split(":")
        return address, int(port) if re.fullmatch(r"[0-9]{1,5}", port) else -1
    return text, None


def when(value: datetime | None) -> str:
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def amount(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


templates.filters["when"] = when
templates.filters["amount"] = amount


def static_file(name: str) -> bytes:
    return resources.files("zerogate.controller.portal").joinpath("static", name).read_bytes()


def form_values(form: Mapping[str, str]) -> list[str]:
    return list(form.values())


def failure(exc: ApiProblem | ValidationError, form: Mapping[str, str]) -> tuple[str, int]:
    """A refused action as (message for the page, HTTP status)."""
    status = exc.status if isinstance(exc, ApiProblem) else 422
    return problem_text(exc, form.values()), status


def checked(form: Mapping[str, str], name: str) -> bool:
    return form.get(name) in ("on", "true", "1")


def number(form: Mapping[str, str], name: str) -> int | None:
    """An optional whole number field; a non-number is left to the schema to refuse."""
    value = form.get(name, "").strip()
    if not value:
        return None
    return int(value) if re.fullmatch(r"[0-9]{1,9}", value) else -1
