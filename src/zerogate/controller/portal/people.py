"""Users and groups: create a user (its activation code shown once), disable one; groups.

Each action is the API's handler (``POST /v1/users``, ``PATCH /v1/users/{username}``,
``POST /v1/groups``), so it is validated and audited exactly as through the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from zerogate.controller import schemas as s
from zerogate.controller.portal import web
from zerogate.controller.state import ApiProblem

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)
USERS = f"{web.PATH}/users"


async def _users(session: web.Session, status: int = 200, **context: Any) -> Response:
    users = await session.api("GET", "/v1/users")
    admins = await session.api("GET", "/v1/admins")
    groups = await session.api("GET", "/v1/groups")
    return session.render("users.html", status, users=users, admins=admins, groups=groups, **context)


@router.get(USERS)
async def users_page(request: Request) -> Response:
    return await _users(await web.signed_in(request))


@router.post(USERS)
async def create_user(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.AccountCreate.model_validate(
            {"username": form.get("username", "").strip(), "display_name": form.get("display_name", ""),
             "email": form.get("email", "").strip(), "groups": web.split_list(form.get("groups", ""))}
        )  # fmt: skip
        created: s.AccountCreated = await session.api("POST", "/v1/users", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _users(session, status, error=error)
    return await _users(session, 201, created=created)


@router.post(f"{USERS}/disable")
async def disable_user(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        user = await session.api(
            "PATCH", "/v1/users/{username}", username=form.get("username", ""),
            body=s.AccountUpdate(disabled=True),
        )  # fmt: skip
    except ApiProblem as exc:
        error, status = web.failure(exc, form)
        return await _users(session, status, error=error)
    return await _users(session, notice=f"user {user.username} disabled")


@router.post(f"{USERS}/groups")
async def create_group(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.GroupCreate.model_validate(
            {"name": form.get("name", "").strip(), "description": form.get("description", ""),
             "members": web.split_list(form.get("members", ""))}
        )  # fmt: skip
        group = await session.api("POST", "/v1/groups", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _users(session, status, error=error)
    return await _users(session, 201, notice=f"group {group.name} created")
