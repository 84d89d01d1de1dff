"""Connector groups, connectors and their provisioning keys; gateways.

A new provisioning key is shown once, on the answer to the POST that made it (the
install string, its expiry and a copy button), never stored by the portal and not
shown again: the list shows only its hint. Revoking a connector is the API's
``DELETE /v1/connectors/{name}`` (its device is revoked and gateways drop its peer);
draining one is ``PATCH`` with ``draining`` (no new flows go to it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from zerogate.controller import schemas as s
from zerogate.controller.portal import web
from zerogate.controller.state import ApiProblem

router = APIRouter(route_class=web.PortalRoute, include_in_schema=False)
CONNECTORS = f"{web.PATH}/connectors"
GATEWAYS = f"{web.PATH}/gateways"


async def _connectors(session: web.Session, status: int = 200, **context: Any) -> Response:
    groups = await session.api("GET", "/v1/connector-groups")
    connectors = await session.api("GET", "/v1/connectors")
    keys = [k for k in await session.api("GET", "/v1/provisioning-keys") if k.state == "usable"]
    return session.render(
        "connectors.html", status, groups=groups, connectors=connectors, keys=keys, **context
    )


@router.get(CONNECTORS)
async def connectors_page(request: Request) -> Response:
    return await _connectors(await web.signed_in(request))


@router.post(f"{CONNECTORS}/groups")
async def create_group(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.ConnectorGroupCreate.model_validate(
            {"name": form.get("name", "").strip(), "description": form.get("description", ""),
             "subnets": web.split_list(form.get("subnets", "")), "snat": web.checked(form, "snat")}
        )  # fmt: skip
        group = await session.api("POST", "/v1/connector-groups", body=body)
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _connectors(session, status, error=error)
    return await _connectors(session, 201, notice=f"connector group {group.name} created")


@router.post(f"{CONNECTORS}/keys")
async def create_key(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        body = s.ProvisioningKeyCreate.model_validate(
            {"description": form.get("description", ""), "ttl_minutes": web.number(form, "ttl_minutes"),
             "max_uses": web.number(form, "max_uses") or 1}
        )  # fmt: skip
        key: s.ProvisioningKeyCreated = await session.api(
            "POST", "/v1/connector-groups/{name}/provisioning-keys", name=form.get("group", ""), body=body
        )
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _connectors(session, status, error=error)
    return await _connectors(session, 201, new_key=key)


@router.post(f"{CONNECTORS}/revoke")
async def revoke_connector(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        await session.api("DELETE", "/v1/connectors/{name:path}", name=form.get("connector", ""))
    except ApiProblem as exc:
        error, status = web.failure(exc, form)
        return await _connectors(session, status, error=error)
    return await _connectors(session, notice="connector revoked")


@router.post(f"{CONNECTORS}/drain")
async def drain_connector(request: Request) -> Response:
    """Drain (no new flows; its established flows go on) or resume a connector: the API's
    ``PATCH /v1/connectors/{name}`` with ``draining``, audited and sent to the gateways."""
    session, form = await web.posted(request)
    draining = form.get("draining") == "true"
    try:
        await session.api(
            "PATCH", "/v1/connectors/{name:path}", name=form.get("connector", ""),
            body=s.ConnectorUpdate(draining=draining),
        )  # fmt: skip
    except ApiProblem as exc:
        error, status = web.failure(exc, form)
        return await _connectors(session, status, error=error)
    return await _connectors(
        session, notice="connector draining" if draining else "connector takes new flows"
    )


async def _gateways(session: web.Session, status: int = 200, **context: Any) -> Response:
    gateways = await session.api("GET", "/v1/gateways")
    return session.render("gateways.html", status, gateways=gateways, **context)


@router.get(GATEWAYS)
async def gateways_page(request: Request) -> Response:
    return await _gateways(await web.signed_in(request))


@router.post(GATEWAYS)
async def create_gateway(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        fields: dict[str, Any] = {
            "name": form.get("name", "").strip(),
            "description": form.get("description", ""),
            "public_endpoint": form.get("public_endpoint", "").strip(),
        }
        for port in ("port_first", "port_last"):
            if (value := web.number(form, port)) is not None:
                fields[port] = value
        gateway = await session.api("POST", "/v1/gateways", body=s.GatewayCreate.model_validate(fields))
    except (ApiProblem, ValidationError) as exc:
        error, status = web.failure(exc, form)
        return await _gateways(session, status, error=error)
    return await _gateways(session, 201, notice=f"gateway {gateway.name} created")


@router.post(f"{GATEWAYS}/keys")
async def create_gateway_key(request: Request) -> Response:
    session, form = await web.posted(request)
    try:
        key = await session.api(
            "POST", "/v1/gateways/{name}/provisioning-keys", name=form.get("gateway", ""),
            body=s.ProvisioningKeyCreate(),
        )  # fmt: skip
    except ApiProblem as exc:
        error, status = web.failure(exc, form)
        return await _gateways(session, status, error=error)
    return await _gateways(session, 201, new_key=key)
