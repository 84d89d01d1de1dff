"""Flow records: what the gateways forwarded or refused, posted in batches and listed.

``POST /v1/flows`` takes a batch from an enrolled gateway (no other caller);
``GET /v1/flows`` lists them for admins with filters, a cursor and a bounded
page. The router also owns the records' life: at start-up it starts the
retention pruner (``flow_retention_days``) and, with ``flow_syslog`` set, the
syslog export (:mod:`zerogate.controller.flow_export`); both stop before the
database closes (FastAPI nests a router's lifespan inside the app's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

from fastapi import APIRouter, FastAPI, Query

from zerogate.controller.auth import Admin, DeviceCaller, State
from zerogate.controller.fields import AwareTime, ObjectName, Username
from zerogate.controller.flow_export import SyslogExporter, parse_target
from zerogate.controller.services import flows
from zerogate.controller.state import ControllerState, Forbidden


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ControllerState = app.state.zg
    settings = state.settings
    pruner = flows.pruner(state.db, settings.flow_retention_days)
    pruner.start()
    exporter = SyslogExporter(parse_target(settings.flow_syslog)) if settings.flow_syslog else None
    if exporter is not None:
        exporter.start()
        state.flow_export = exporter
    try:
        yield
    finally:
        if exporter is not None:
            state.flow_export = None
            await exporter.stop()
        await pruner.stop()


router = APIRouter(prefix="/v1", tags=["flows"], lifespan=lifespan)


@router.post("/flows", status_code=202)
async def post_flows(body: flows.FlowBatch, who: DeviceCaller, state: State) -> dict[str, int]:
    """A gateway's batch of flow records (at most 1000)."""
    if who.role != "gateway":
        raise Forbidden("only gateways post flow records")
    async with state.db.write() as tx:
        rows = await flows.ingest(tx.session, who.id, body)
        exporter = state.flow_export
        stored = [flows.as_json(r) for r in rows] if exporter is not None else []
    if exporter is not None and stored:
        exporter.offer(stored)  # after the commit: only what the database holds
    return {"accepted": len(rows)}


@router.get("/flows")
async def list_flows(
    admin: Admin,
    state: State,
    user: Username | None = Query(None, description="Only this user's flows"),
    app: ObjectName | None = Query(None, description="Only flows to this application"),
    since: AwareTime | None = Query(None, description="Flows that started at or after this time"),
    denied: bool | None = Query(None, description="true: only refused flows; false: only forwarded"),
    after_id: int = Query(0, ge=0, le=2**62),
    limit: int = Query(100, ge=1, le=flows.MAX_PAGE),
) -> list[dict[str, Any]]:
    """Flow records, oldest first after ``after_id`` (the last id of the previous page)."""
    async with state.db.read() as session:
        rows = await flows.records(
            session,
            user=user,
            app=app,
            since=since.astimezone(UTC) if since is not None else None,  # SQLite compares text
            denied=denied,
            after_id=after_id,
            limit=limit,
        )
        return [flows.as_json(r) for r in rows]
