"""The controller's ASGI app: routers, error shape, start-up and shut-down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from zerogate import __version__
from zerogate.controller import auth, errors, portal, tokens
from zerogate.controller.api import (
    accounts,
    applications,
    audit,
    client_sessions,
    config,
    connector_groups,
    connectors,
    controllers,
    devices,
    enrollment,
    flows,
    gateways,
    groups,
    meta,
    metrics_api,
    policies,
    pool,
    preflight,
    provisioning_keys,
    report_history,
    segment,
    segment_jit,
    segment_review,
    segment_servers,
)
from zerogate.controller.limits import BodyLimit, known_query_only
from zerogate.controller.metrics import RequestMetrics
from zerogate.controller.openapi_doc import build_openapi
from zerogate.controller.state import ApiProblem, ControllerState


def create_app(state: ControllerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.watch.start()
        state.refusals.start()
        try:
            yield
        finally:
            # Pending refusal summaries are written before the database closes.
            await state.refusals.stop()
            await state.watch.stop()
            await state.db.close()

    app = FastAPI(
        title="zerogate controller",
        version=__version__,
        description="Identity, policy, keys and audit for a zerogate deployment.",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        dependencies=[Depends(known_query_only)],
    )
    app.state.zg = state
    # Every error is {"detail": text} built without echoing the input (errors.py).
    app.add_exception_handler(ApiProblem, errors.api_problem)
    app.add_exception_handler(RequestValidationError, errors.validation_problem)
    app.add_exception_handler(StarletteHTTPException, errors.http_problem)

    async def caller_kind(scope: Scope) -> str | None:
        request = Request(scope)
        try:
            who = await auth.principal(request, state)
        except ApiProblem:
            return None
        request.state.principal = who  # the route's own principal() reuses it: one lookup
        return who.kind

    # Outermost: a too-large body is refused before any of the app sees it.
    app.add_middleware(BodyLimit, max_body_bytes=state.settings.max_body_bytes, caller_kind=caller_kind)
    app.add_middleware(RequestMetrics, metrics=state.metrics)  # outside BodyLimit: counts its 413s too

    objects = (accounts, groups, connector_groups, gateways, applications, policies, pool, audit, controllers)
    device_side = (
        meta,
        metrics_api,
        provisioning_keys,
        enrollment,
        devices,
        connectors,
        config,
        client_sessions,
        flows,
        report_history,
    )
    segment_side = (segment_servers, segment, segment_review, segment_jit)
    for module in (auth, tokens, *objects, *device_side, preflight, *segment_side, portal):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
    return app
