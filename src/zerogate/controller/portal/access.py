"""Applications, policies with the explain tool, and the address pool.

Explain is the API's ``POST /v1/policy/explain`` (services/policies.explain): would this
user reach this address and port now, and which policy decides it (or why not).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from zerogate.controller import schemas as s
from zerogate.controller.portal import web
from zerogate.controller.state import ApiProblem

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)
APPLICATIONS = f"{web.PATH}/applications"
POLICIES = f"{web.PATH}/policies"
POOL = f"{web.PATH}/address-pool"


async def _applications(session: web.Session, status: int = 200, **context: Any) -> Response:
    apps = await session.api("GET", "/v1/applications")
    groups = await session.api("GET", "/v1/connector-groups")
    return session.render("applications.html", status, applications=apps, groups=groups, **context)


@router.get(APPLICATIONS)
async def applications_page(request: Request) -> Response:
    return await _applications(await web.signed_in(request))


@router.post(APPLICATIONS)
async def create_application(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        destination = {"address": form.get("address", "").strip(), "protocol": form.get("protocol", "tcp"),
                       "ports": web.split_list(form.get("ports", ""))}  # fmt: skip
        body = s.ApplicationCreate.model_validate(
            {"name": form.get("name", "").strip(), "description": form.get("description", ""),
             "connector_group": form.get("connector_group", ""), "destinations": [destination]}
        )  # fmt: skip
        app = await session.api("POST", "/v1/applications", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _applications(session, status, error=error)
    return await _applications(session, 201, notice=f"application {app.name} created")


async def _policies(session: web.Session, status: int = 200, **context: Any) -> Response:
    policies = await session.api("GET", "/v1/policies")
    groups = await session.api("GET", "/v1/groups")
    apps = await session.api("GET", "/v1/applications")
    users = await session.api("GET", "/v1/users")
    return session.render(
        "policies.html", status, policies=policies, groups=groups, applications=apps, users=users, **context
    )


@router.get(POLICIES)
async def policies_page(request: Request) -> Response:
    return await _policies(await web.signed_in(request))


@router.post(POLICIES)
async def create_policy(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.PolicyCreate.model_validate(
            {"name": form.get("name", "").strip(), "description": form.get("description", ""),
             "groups": web.split_list(form.get("groups", "")),
             "applications": web.split_list(form.get("applications", "")),
             "require_mfa": web.checked(form, "require_mfa")}
        )  # fmt: skip
        policy = await session.api("POST", "/v1/policies", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _policies(session, status, error=error)
    return await _policies(session, 201, notice=f"policy {policy.name} created")


@router.post(f"{POLICIES}/explain")
async def explain(request: Request) -> Response:
    session, form = await web.posted(request)
    address, port = web.split_destination(form.get("destination", ""))
    try:
        body = s.ExplainRequest.model_validate(
            {"username": form.get("username", "").strip(), "destination": address,
             "protocol": form.get("protocol", "tcp"), "port": port}
        )  # fmt: skip
        answer: s.ExplainResponse = await session.api("POST", "/v1/policy/explain", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _policies(session, status, error=error)
    return await _policies(session, explained=answer, asked=body)


async def _pool(session: web.Session, status: int = 200, **context: Any) -> Response:
    pool = await session.api("GET", "/v1/address-pool")
    return session.render("pool.html", status, pool=pool, **context)


@router.get(POOL)
async def pool_page(request: Request) -> Response:
    return await _pool(await web.signed_in(request))


@router.post(POOL)
async def update_pool(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.AddressPoolUpdate.model_validate({"blocks": web.split_list(form.get("blocks", ""))})
        await session.api("PUT", "/v1/address-pool", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _pool(session, status, error=error)
    return await _pool(session, notice="address pool updated")
