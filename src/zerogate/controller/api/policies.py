"""``/v1/policies``, plus ``POST /v1/policy/explain``."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.api.crud import Change, Resource, crud_routes
from zerogate.controller.auth import Admin, State
from zerogate.controller.services import policies
from zerogate.controller.services.lookup import by_name
from zerogate.store.models import Policy

router = APIRouter(prefix="/v1", tags=["objects"])


def policy_out(p: Policy) -> s.PolicyOut:
    return s.PolicyOut(
        id=p.id,
        name=p.name,
        description=p.description,
        groups=sorted(g.name for g in p.groups),
        applications=sorted(a.name for a in p.applications),
        require_mfa=p.require_mfa,
        time_window=p.time_window,
        enabled=p.enabled,
        created_at=p.created_at,
    )


async def find(session: AsyncSession, name: str) -> Policy:
    return await by_name(session, Policy, name, "policy")


async def list_all(session: AsyncSession) -> list[s.PolicyOut]:
    return [policy_out(p) for p in await policies.list_policies(session)]


async def show(session: AsyncSession, policy: Policy) -> s.PolicyOut:
    return policy_out(policy)


async def create(change: Change, body: s.PolicyCreate) -> s.PolicyOut:
    return policy_out(await policies.create(change.session, body))


async def update(change: Change, policy: Policy, body: s.PolicyUpdate) -> s.PolicyOut:
    await policies.update(change.session, policy, body)
    return policy_out(policy)


async def delete(change: Change, policy: Policy) -> None:
    await policies.delete(change.session, policy)


crud_routes(
    router,
    Resource(
        kind="policy",
        path="/policies",
        tag="policies",
        noun="policy",
        nouns="policies",
        key="name",
        out=s.PolicyOut,
        created=s.PolicyOut,
        create_body=s.PolicyCreate,
        update_body=s.PolicyUpdate,
        find=find,
        list_all=list_all,
        show=show,
        create=create,
        update=update,
        delete=delete,
    ),
)


@router.post("/policy/explain", response_model=s.ExplainResponse, tags=["policies"])
async def explain(body: s.ExplainRequest, admin: Admin, state: State) -> s.ExplainResponse:
    """Would this user reach this destination, and which policy decides it?"""
    async with state.db.read() as session:
        decision = await policies.explain(session, body)
    return s.ExplainResponse(allowed=decision.allowed, policy=decision.policy_name, reason=decision.reason)
