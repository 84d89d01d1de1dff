"""``POST /v1/enroll`` (a connector or gateway, with a provisioning key) and
``POST /v1/clients`` (a signed-in user's device).

Either way the device sends its CSR and WireGuard public key (its private
keys never leave it) and gets its certificate, the CA and a bearer credential,
shown once. Enrollment is throttled per source and its refusals are
aggregated, so strangers cannot grow the audit log. (A key checked without
being used: :mod:`.preflight`; a client's session renewal: :mod:`.client_sessions`.)
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from zerogate.controller import schemas as s
from zerogate.controller.auth import AnyAccount, State, client_source
from zerogate.controller.metrics import outcome
from zerogate.controller.services import clients, enrollment
from zerogate.controller.services.enrollment import DeviceCA
from zerogate.controller.state import ApiProblem, ControllerState, Principal
from zerogate.pki.credentials import token_hint

router = APIRouter(prefix="/v1", tags=["devices"])


def _ca(state: ControllerState) -> DeviceCA:
    return DeviceCA(cert_pem=state.ca_pem, key_pem=state.ca_key_pem)


@router.post("/enroll", response_model=s.EnrollResponse, tags=["enrollment"])
async def enroll(body: s.EnrollRequest, request: Request, state: State) -> s.EnrollResponse:
    """Enroll a connector or gateway with a provisioning key."""
    who = Principal(kind="anonymous", name=body.name, source=client_source(request))
    hint = token_hint(body.key)
    # Throttled per source; refusals are aggregated so strangers cannot grow the audit log.
    try:
        async with (
            state.key_attempt(who, "enroll", "device", {"key": hint, "name": body.name}),
            state.mutation(who, "enroll", "device", aggregate=True) as m,
        ):
            m.details = {"key": hint, "name": body.name}
            enrolled = await enrollment.enroll(m.tx.session, _ca(state), body, m.details)
            device = enrolled.device
            m.object_id = device.id
            m.details["role"] = device.role
            answer = s.EnrollResponse(
                device_id=device.id,
                role=device.role,
                name=device.name,
                credential=enrolled.credential,
                certificate=device.cert_pem,
                ca_certificate=state.ca_pem.decode(),
            )
    except ApiProblem as exc:
        state.metrics.enrollments.labels("unknown", outcome(exc)).inc()  # the key names the role
        raise
    state.metrics.enrollments.labels(answer.role, "success").inc()
    return answer


@router.post("/clients", response_model=s.ClientRegisterResponse, tags=["enrollment"])
async def register_client(
    body: s.ClientRegisterRequest, who: AnyAccount, state: State
) -> s.ClientRegisterResponse:
    """Register the signed-in user's device and give it a pool address.

    If the default block collides with one of the device's own networks, the
    address comes from the first alternate block that does not.
    """
    try:
        clients.check_can_register(who)
        async with state.mutation(who, "register-client", "device") as m:
            new = await clients.register(m.tx.session, _ca(state), who, body)
            device = new.enrolled.device
            m.object_id = device.id
            m.details = {"address": str(new.address), "block": str(new.block)}
            answer = s.ClientRegisterResponse(
                device_id=device.id,
                role="client",
                name=device.name,
                credential=new.enrolled.credential,
                certificate=device.cert_pem,
                ca_certificate=state.ca_pem.decode(),
                address=str(new.address),
                address_block=str(new.block),
                moved_from_default_block=new.moved_from_default_block,
                session_expires_at=new.session_expires_at,
            )
    except ApiProblem as exc:
        state.metrics.enrollments.labels("client", outcome(exc)).inc()
        raise
    state.metrics.enrollments.labels("client", "success").inc()
    return answer
