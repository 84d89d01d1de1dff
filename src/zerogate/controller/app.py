"""The controller's ASGI app: routers, error shape, start-up and shut-down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from zerogate import __version__
from zerogate.controller import api_devices, api_objects, api_preflight, auth, tokens
from zerogate.controller.state import ApiProblem, ControllerState


def create_app(state: ControllerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.watch.start()
        try:
            yield
        finally:
            await state.watch.stop()
            await state.db.close()

    app = FastAPI(
        title="zerogate controller",
        version=__version__,
        description="Identity, policy, keys and audit for a zerogate deployment.",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.zg = state

    @app.exception_handler(ApiProblem)
    async def problem(_: Request, exc: ApiProblem) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    for module in (auth, tokens, api_objects, api_devices, api_preflight):
        app.include_router(module.router)
    return app
