"""The controllers of the deployment: join secrets and who is up.

``POST /v1/controllers/join-secrets`` (admin, audited) makes a one-time secret
for ``zerogate controller join``, shown once; ``GET /v1/controllers`` (admin)
lists the controllers with online/offline from their heartbeats. The router's
lifespan runs this controller's heartbeat (:mod:`..services.controllers`),
stopped before the database closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from zerogate import __version__
from zerogate.controller import background
from zerogate.controller.auth import Admin, State
from zerogate.controller.deployment import DeploymentError, read_material
from zerogate.controller.services import controllers as svc
from zerogate.controller.state import Conflict, ControllerState


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ControllerState = app.state.zg
    name = svc.controller_name(state.settings.data_dir)
    # Its own address (first server name, listening port), not the shared public URL.
    own_url = state.settings.model_copy(update={"public_url": ""}).url
    task = background.start(svc.heartbeat_loop(state.db, name, own_url, __version__), "controller heartbeat")
    try:
        yield
    finally:
        await background.stop(task)


router = APIRouter(prefix="/v1", tags=["controllers"], lifespan=lifespan)


class JoinSecretCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl_minutes: int = Field(default=60, ge=1, le=24 * 60)


class JoinSecretCreated(BaseModel):
    secret: str
    hint: str
    expires_at: datetime


@router.post("/controllers/join-secrets", response_model=JoinSecretCreated, status_code=201)
async def create_join_secret(body: JoinSecretCreate, admin: Admin, state: State) -> JoinSecretCreated:
    """A one-time secret for 'zerogate controller join' (PostgreSQL only). Shown once."""
    if state.db.is_sqlite:
        raise Conflict("several controllers need PostgreSQL; this deployment uses SQLite")
    try:
        ca_cert, ca_key = read_material(state.settings)
    except DeploymentError as exc:
        raise Conflict(str(exc)) from None
    async with state.mutation(admin, "create-join-secret", "controller-join-secret") as m:
        m.config_change = False
        try:
            new = await svc.create_join_secret(m.tx.session, ca_cert, ca_key, admin.actor, body.ttl_minutes)
        except svc.JoinError as exc:
            raise Conflict(str(exc)) from None
        m.object_id = new.row.id
        m.details = {"hint": new.row.hint, "ttl_minutes": body.ttl_minutes}
    return JoinSecretCreated(secret=new.secret, hint=new.row.hint, expires_at=new.row.expires_at)


@router.get("/controllers")
async def list_controllers(admin: Admin, state: State) -> list[dict[str, Any]]:
    """The controllers of this deployment, online when heard from within 3 heartbeats."""
    async with state.db.read() as session:
        return await svc.list_controllers(session)
