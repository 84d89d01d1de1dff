"""Sign-in, sign-out and the portal's two static files.

Sign-in goes through the API's own login handler (:func:`zerogate.controller.auth.login`):
the same password check, throttle (a 429 with ``Retry-After``), TOTP replay guard, audit
record and sign-in metric; the portal then keeps the session token in its cookie. Only
admins may use the portal: a user's session is ended at once and the sign-in refused.
"""

from __future__ import annotations

import re
from datetime import UTC

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from zerogate.controller import auth
from zerogate.controller import schemas as s
from zerogate.controller.auth import client_source
from zerogate.controller.portal import web
from zerogate.controller.state import ApiProblem, Principal, TooManyAttempts

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)

STATIC = {"portal.css": "text/css; charset=utf-8", "copy.js": "text/javascript; charset=utf-8"}
WRONG = "sign-in failed: wrong username, password or code"
_RETRY = re.compile(r"[0-9]{1,6}")


def _page(message: str = "", status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    html = web.templates.get_template("signin.html").render(error=message, page="signin")
    return HTMLResponse(html, status_code=status, headers=headers)


@router.get(web.SIGN_IN)
async def sign_in_page(request: Request) -> Response:
    try:
        await web.signed_in(request)
    except web.NotSignedIn:
        return _page()
    return RedirectResponse(f"{web.PATH}/", status_code=303)


@router.post(web.SIGN_IN)
async def sign_in(request: Request) -> Response:
    web.same_origin(request)
    form = await web.read_form(request)
    try:
        body = s.LoginRequest.model_validate(
            {"username": form.get("username", ""), "password": form.get("password", ""),
             "totp": form.get("totp", "").strip()}
        )  # fmt: skip
    except ValidationError:
        return _page(WRONG, 401)
    state = web.state_of(request)
    try:
        answer = await auth.login(body, request, state)
    except TooManyAttempts as exc:
        wait = (exc.headers or {}).get("Retry-After", "60")
        headers = {"Retry-After": wait} if _RETRY.fullmatch(wait) else None
        return _page("too many failed sign-ins; try again later", 429, headers)
    except ApiProblem as exc:
        return _page(WRONG if exc.status == 401 else "this account cannot sign in now", exc.status)
    if answer.kind != "admin":
        # The portal is for admins: end the session just made, as a sign-out would.
        who = Principal(kind=answer.kind, name=answer.username, token_id=answer.token_id,
                        source=client_source(request))  # fmt: skip
        await auth.logout(who, state)
        return _page("the admin portal is for admin accounts", 403)
    response = RedirectResponse(f"{web.PATH}/", status_code=303)
    expires = answer.expires_at if answer.expires_at.tzinfo else answer.expires_at.replace(tzinfo=UTC)
    response.set_cookie(
        web.COOKIE,
        answer.token,
        expires=expires,
        path=web.PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post(f"{web.PATH}/sign-out")
async def sign_out(request: Request) -> Response:
    """End the session on the controller (the token is revoked), then forget the cookie."""
    session, _ = await web.posted(request)
    await auth.logout(session.who, session.state)
    response = RedirectResponse(web.SIGN_IN, status_code=303)
    response.delete_cookie(web.COOKIE, path=web.PATH, secure=True, httponly=True, samesite="strict")
    return response


@router.get(web.PATH + "/static/{name}")
async def static(name: str) -> Response:
    kind = STATIC.get(name)
    if kind is None:
        raise web.Refused(404, "no such file")
    return Response(web.static_file(name), media_type=kind, headers={"Cache-Control": "no-store"})
