"""What devices call once enrolled: ``GET /v1/snapshot`` and ``POST /v1/report``.

Each device fetches and watches its config snapshot: exactly what its role
needs, at a monotonic revision; ``?after=N&wait=S`` long-polls until the
revision passes N. A watch ended by the controller's shutdown answers 503 with
``Retry-After: 1`` and ``Connection: close``: the device reconnects a moment
later instead of counting it as a failure.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from zerogate.controller import schemas as s
from zerogate.controller.auth import DeviceCaller, State
from zerogate.controller.services import devices
from zerogate.controller.services.snapshots import build_snapshot
from zerogate.model.snapshot import Snapshot
from zerogate.store.db import utcnow

router = APIRouter(prefix="/v1", tags=["devices"])

GOING_AWAY = "controller going away: it is shutting down; reconnect in a moment"


def going_away_response() -> Response:
    """503 for a watch ended by a controller shutdown: the device retries after 1 s."""
    return JSONResponse(
        {"detail": GOING_AWAY}, status_code=503, headers={"Retry-After": "1", "Connection": "close"}
    )


@router.get("/snapshot", tags=["config"])
async def snapshot(
    who: DeviceCaller,
    state: State,
    after: int = Query(-1, ge=-1, description="return as soon as the revision is above this"),
    wait: float = Query(0, ge=0, le=600, description="seconds to wait for a newer revision"),
) -> Any:
    """The device's config snapshot; with ``after``/``wait`` a long-poll watch.

    204 when nothing newer arrived within ``wait`` seconds; 503 with
    ``Retry-After: 1`` when the controller is shutting down. Each call counts
    as a sign of life for ``last_seen_at`` (written at most every 30 s).
    """
    if after >= 0 and state.watch.current <= after and wait > 0:
        await state.watch.wait_past(after, min(wait, state.settings.watch_max_seconds))
    if state.watch.going_away:
        return going_away_response()
    snap: Snapshot | None = None
    async with state.db.read() as session:
        # The revision first, in the same session: whatever is read after it is at
        # least that new, so a device never holds an older snapshot under a newer number.
        revision = await state.db.revision(session)
        device = await devices.active_device(session, who.id)
        stale = devices.seen_is_due(device, utcnow())
        if after < 0 or revision > after:
            started = time.monotonic()
            snap = await build_snapshot(session, device, revision, state.policies)
            state.metrics.snapshot_seconds.labels(device.role).observe(time.monotonic() - started)
    if stale:
        async with state.db.write() as tx:
            await devices.mark_seen(tx.session, who.id)
    if snap is None:
        return Response(status_code=204)
    body = json.dumps(snap.model_dump(mode="json"), sort_keys=True)
    return Response(
        content=body,
        media_type="application/json",
        headers={
            "ETag": hashlib.sha256(body.encode()).hexdigest()[:32],
            "X-Zerogate-Revision": str(revision),
        },
    )


@router.post("/report", status_code=204, tags=["config"])
async def report(body: s.DeviceReport, who: DeviceCaller, state: State) -> None:
    """A device's data-plane state: peers, last handshakes, bytes, version.

    Not audited and no revision bump: it changes nothing anyone is told.
    """
    async with state.db.write() as tx:
        await devices.store_report(tx.session, who.id, body, state.history)
