"""The compiled policy of one config revision, shared by every snapshot request.

Every gateway, connector and following client fetches a snapshot when the
revision moves. Compiling the whole policy once per request made one change
cost (devices x compile time); with the cache it costs one compile, and the
other requests of that revision only pick their part out of the result.

An entry is good for its revision (every config write bumps it, in the same
transaction) and until the earlier of the policy's next time-window boundary
and the next client session expiry, the two things that change the compiled
result without a write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.policy_inputs import load_policy_inputs
from zerogate.model.policy import PolicyInputs
from zerogate.model.snapshot import GatewayGrant, GatewayPolicy
from zerogate.policy.compiler import CompiledPolicy, compile_policy
from zerogate.store.db import read_revision, utcnow
from zerogate.store.models import Device


@dataclass
class PolicyView:
    revision: int
    inputs: PolicyInputs
    compiled: CompiledPolicy
    valid_until: datetime | None
    apps_by_policy: dict[int, list[str]]
    _gateway_policy: GatewayPolicy | None = field(default=None, repr=False)

    def fresh(self, revision: int, now: datetime) -> bool:
        return self.revision == revision and (self.valid_until is None or now < self.valid_until)

    def gateway_policy(self) -> GatewayPolicy:
        """The gateway snapshot's ``policy`` part, built once per entry: the
        grants' rules cut into disjoint nftables elements here, not on every gateway."""
        if self._gateway_policy is None:
            self._gateway_policy = GatewayPolicy(
                grants=gateway_grants(self.compiled), valid_until=self.compiled.next_change
            )
        return self._gateway_policy


def gateway_grants(compiled: CompiledPolicy) -> tuple[GatewayGrant, ...]:
    """Every compiled policy as the gateway renders it (sources and disjoint elements)."""
    return tuple(
        GatewayGrant.from_rules(
            g.policy_id,
            g.name,
            g.sources,
            [(r.destination, r.protocol, r.first_port, r.last_port) for r in g.rules],
        )
        for g in compiled.policies.values()
    )


async def load_view(session: AsyncSession, revision: int, now: datetime) -> PolicyView:
    inputs = await load_policy_inputs(session, now)
    compiled = compile_policy(inputs, now=now)
    next_expiry = await session.scalar(
        select(func.min(Device.session_expires_at)).where(
            Device.role == "client", Device.status == "active", Device.session_expires_at > now
        )
    )
    bounds = [t for t in (compiled.next_change, next_expiry) if t is not None]
    names = {a.id: a.name for a in inputs.apps}
    return PolicyView(
        revision=revision,
        inputs=inputs,
        compiled=compiled,
        valid_until=min(bounds) if bounds else None,
        apps_by_policy={p.id: sorted(names[i] for i in p.app_ids) for p in inputs.policies},
    )


class PolicyCache:
    """One entry, the newest revision asked for; requests that miss at the
    same time wait for the first one's compile instead of repeating it."""

    def __init__(self) -> None:
        self._entry: PolicyView | None = None
        self._lock = asyncio.Lock()
        self.hits = 0
        self.misses = 0
        self.observe_compile: Callable[[float], None] | None = None  # seconds per load + compile

    @property
    def revision(self) -> int | None:
        return self._entry.revision if self._entry else None

    async def get(self, session: AsyncSession, revision: int) -> PolicyView:
        entry = self._entry
        if entry is not None and entry.fresh(revision, utcnow()):
            self.hits += 1
            return entry
        async with self._lock:
            entry = self._entry
            now = utcnow()
            if entry is not None and entry.fresh(revision, now):
                self.hits += 1
                return entry
            self.misses += 1
            started = time.monotonic()
            view = await load_view(session, revision, now)
            if self.observe_compile is not None:
                self.observe_compile(time.monotonic() - started)
            # Under PostgreSQL's read committed a write can land mid-load; such a
            # mixed view serves this request (its device refetches) but is not kept.
            if await read_revision(session) == revision and (
                self._entry is None or self._entry.revision <= revision
            ):
                self._entry = view
            return view
