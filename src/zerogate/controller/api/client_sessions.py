"""``POST /v1/clients/{device_id}/session``: extend a client device's session.

Its own router (not enrollment's) only so that the OpenAPI document lists it
where it always was, after the device calls.
"""

from __future__ import annotations

from fastapi import APIRouter

from zerogate.controller import schemas as s
from zerogate.controller.auth import AnyAccount, State
from zerogate.controller.ids import shown_id
from zerogate.controller.services import clients

router = APIRouter(prefix="/v1", tags=["devices"])


@router.post("/clients/{device_id}/session", response_model=s.ClientSessionOut, tags=["enrollment"])
async def renew_client_session(device_id: int, who: AnyAccount, state: State) -> s.ClientSessionOut:
    """Extend the device's session to the caller's sign-in (a fresh password + TOTP login)."""
    async with state.mutation(who, "renew-session", "device", shown_id(device_id)) as m:
        device = await clients.renew_session(m.tx.session, who, device_id)
        return s.ClientSessionOut(device_id=device.id, session_expires_at=device.session_expires_at)
