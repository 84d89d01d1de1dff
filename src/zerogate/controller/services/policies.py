"""Policies: which groups reach which applications, with MFA and a time
window; and ``explain``, which says whether one user would reach one
destination and which policy decides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller import schemas as s
from zerogate.controller.policy_inputs import load_policy_inputs
from zerogate.controller.services.lookup import all_by_name, by_name, ensure_free
from zerogate.controller.state import NotFound
from zerogate.policy.compiler import Decision
from zerogate.policy.compiler import explain as explain_policy
from zerogate.store.db import utcnow
from zerogate.store.models import Account, Application, Group, Policy


async def list_policies(session: AsyncSession) -> Sequence[Policy]:
    return (await session.scalars(select(Policy).order_by(Policy.name))).all()


async def create(session: AsyncSession, body: s.PolicyCreate) -> Policy:
    await ensure_free(session, Policy, body.name, "policy")
    policy = Policy(
        name=body.name,
        description=body.description,
        enabled=body.enabled,
        require_mfa=body.require_mfa,
        time_window=body.time_window.as_json() if body.time_window else None,
        groups=await all_by_name(session, Group, body.groups, "group"),
        applications=await all_by_name(session, Application, body.applications, "application"),
        created_at=utcnow(),
    )
    session.add(policy)
    await session.flush()
    return policy


async def update(session: AsyncSession, policy: Policy, body: s.PolicyUpdate) -> None:
    """Apply the given fields; ``clear_time_window`` wins over a new window."""
    if body.description is not None:
        policy.description = body.description
    if body.groups is not None:
        policy.groups = await all_by_name(session, Group, body.groups, "group")
    if body.applications is not None:
        policy.applications = await all_by_name(session, Application, body.applications, "application")
    if body.require_mfa is not None:
        policy.require_mfa = body.require_mfa
    if body.enabled is not None:
        policy.enabled = body.enabled
    if body.clear_time_window:
        policy.time_window = None
    elif body.time_window is not None:
        policy.time_window = body.time_window.as_json()


async def delete(session: AsyncSession, policy: Policy) -> None:
    await session.delete(policy)


async def explain(session: AsyncSession, body: s.ExplainRequest) -> Decision:
    """Would this user reach this destination now, and which policy decides it?"""
    user = await by_name(session, Account, body.username, "user")
    if user.kind != "user":
        raise NotFound(
            f"no user named {body.username!r} ({body.username} is an admin; admins reach no applications)"
        )
    if user.status == "pending":
        return Decision(False, None, None, f"user {user.username!r} has not activated the account yet")
    inputs = await load_policy_inputs(session)
    return explain_policy(
        inputs,
        user_id=user.id,
        destination=ip_address(body.destination),
        protocol=body.protocol,
        port=body.port,
        now=utcnow(),
        mfa=body.mfa,
    )
