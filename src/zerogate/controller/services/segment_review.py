"""Segment review: learned flows become proposed rules, an admin approves,
rejects or edits them, stale approved rules come back as proposed deletions,
and a simulation replays the flows against the candidate rules.

The learning and review logic is :mod:`zerogate.policy.segment`'s (pure);
this module feeds it from the database. Known groups, which a proposal
names instead of single addresses when all peers fit one:

- ``site:<name>``: a connector group's subnets;
- ``clients``: the client address pool's blocks;
- ``asset:<name>``: another asset's address.

A rule keeps its sources as shown (group names, prefixes) and the networks
they resolved to when it was proposed or decided: what the host enforces
changes only with a decision (and a new ``rules_revision``), never because a
group changed under it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from zerogate.controller.ids import row_id, shown_id
from zerogate.controller.schemas import segment as ss
from zerogate.controller.state import NotFound, Unprocessable
from zerogate.model.segment import Flow, Group, Network, ProposedRule, SimulationResult
from zerogate.policy import segment as learning
from zerogate.store.db import utcnow
from zerogate.store.models import (
    AddressPoolRow,
    ConnectorGroup,
    SegmentAssetRow,
    SegmentFlowRow,
    SegmentRuleRow,
)

MAX_RULES = 64  # proposed rules per asset before the proposal warns
MAX_NETWORKS = ss.MAX_RULE_SOURCES


def row_flow(r: SegmentFlowRow) -> Flow:
    return Flow(
        protocol=r.protocol,  # type: ignore[arg-type]
        port=r.port,
        peer=ip_address(r.peer),
        process=r.process or None,
        first_seen=r.first_seen,
        last_seen=r.last_seen,
        count=r.count,
        direction=r.direction,  # type: ignore[arg-type]
    )


async def flow_rows(session: AsyncSession, asset: SegmentAssetRow) -> Sequence[SegmentFlowRow]:
    return (
        await session.scalars(
            select(SegmentFlowRow).where(SegmentFlowRow.asset_id == asset.id).order_by(SegmentFlowRow.id)
        )
    ).all()


async def asset_flows(session: AsyncSession, asset: SegmentAssetRow) -> list[Flow]:
    return [row_flow(r) for r in await flow_rows(session, asset)]


async def known_groups(session: AsyncSession, asset: SegmentAssetRow) -> dict[str, list[Network]]:
    """The groups a rule of ``asset`` may name (see the module docstring)."""
    groups: dict[str, list[Network]] = {}
    for g in await session.scalars(select(ConnectorGroup).order_by(ConnectorGroup.name)):
        groups[f"site:{g.name}"] = [ip_network(n) for n in g.subnets]
    pool = await session.scalar(select(AddressPoolRow).where(AddressPoolRow.name == "default"))
    if pool is not None and pool.blocks:
        groups["clients"] = [ip_network(b) for b in pool.blocks]
    for other in await session.scalars(select(SegmentAssetRow).where(SegmentAssetRow.id != asset.id)):
        groups[f"asset:{other.name}"] = [ip_network(other.address)]
    return groups


def _networks(sources: Iterable[str], groups: dict[str, list[Network]]) -> list[str]:
    """The networks ``sources`` stand for, each once; NotFound for a group that is not known."""
    out: dict[str, None] = {}
    for position, source in enumerate(sources):
        if source == "clients" or source.startswith(("site:", "asset:")):
            if source not in groups:
                raise NotFound(
                    f"sources[{position}] names no known group: use clients, site:<connector group> "
                    "or asset:<another asset>"
                )
            out.update((str(n), None) for n in groups[source])
        else:
            out[str(ip_network(source))] = None
    if len(out) > MAX_NETWORKS:
        raise Unprocessable(f"the sources stand for {len(out)} networks; a rule takes at most {MAX_NETWORKS}")
    return list(out)


async def find_rule(session: AsyncSession, asset: SegmentAssetRow, rule_id: int) -> SegmentRuleRow:
    key = row_id(rule_id)
    rule = None if key is None else await session.get(SegmentRuleRow, key)
    if rule is None or rule.asset_id != asset.id:
        raise NotFound(f"asset {asset.name} has no rule with id {shown_id(rule_id)}")
    return rule


async def rules_of(session: AsyncSession, asset: SegmentAssetRow) -> Sequence[SegmentRuleRow]:
    return (
        await session.scalars(
            select(SegmentRuleRow).where(SegmentRuleRow.asset_id == asset.id).order_by(SegmentRuleRow.id)
        )
    ).all()


def as_proposed(rule: SegmentRuleRow) -> ProposedRule:
    """A stored rule as the pure code's rule (its resolved networks as sources)."""
    return ProposedRule(
        protocol=rule.protocol,  # type: ignore[arg-type]
        first_port=rule.port_first,
        last_port=rule.port_last,
        sources=tuple(ip_network(n) for n in rule.networks),
    )


def stale_ids(asset: SegmentAssetRow, rules: Sequence[SegmentRuleRow], flows: Sequence[Flow]) -> set[int]:
    """Approved accept rules no flow used since the last learning window began: proposed deletions."""
    if asset.learning_started_at is None:
        return set()
    approved = [r for r in rules if r.status == "approved" and r.action == "accept"]
    given = [as_proposed(r) for r in approved]
    # stale() returns the very objects it was given, in order: map them back by identity
    unused = {id(p) for p in learning.stale(given, flows, asset.learning_started_at)}
    return {r.id for r, p in zip(approved, given, strict=True) if id(p) in unused}


@dataclass(frozen=True)
class Proposed:
    rules: list[SegmentRuleRow]
    warning: str | None


def _evidence(rule: ProposedRule) -> dict[str, Any] | None:
    e = rule.evidence
    if e is None:
        return None
    return {
        "flows": e.flows,
        "connections": e.connections,
        "peers": e.peers,
        "first_seen": e.first_seen.isoformat(),
        "last_seen": e.last_seen.isoformat(),
    }


async def propose_rules(
    session: AsyncSession, asset: SegmentAssetRow, max_rules: int = MAX_RULES
) -> Proposed:
    """Replace the asset's open proposals with new ones from its learned flows.

    A service (protocol and port) that an approved or rejected rule covers
    is not proposed again: the admin decided it.
    """
    flows = await asset_flows(session, asset)
    groups = await known_groups(session, asset)
    proposal = learning.propose(flows, groups, max_rules=max_rules)
    await session.execute(
        delete(SegmentRuleRow).where(SegmentRuleRow.asset_id == asset.id, SegmentRuleRow.status == "proposed")
    )
    decided = [as_proposed(r) for r in await rules_of(session, asset)]
    now = utcnow()
    made: list[SegmentRuleRow] = []
    for rule in proposal.rules:
        if any(d.covers(rule.protocol, rule.first_port) for d in decided):
            continue
        shown = [s.name if isinstance(s, Group) else str(s) for s in rule.sources]
        nets: dict[str, None] = {}
        for s in rule.sources:
            nets.update((str(n), None) for n in (s.networks if isinstance(s, Group) else (s,)))
        row = SegmentRuleRow(
            asset_id=asset.id,
            status="proposed",
            action="accept",
            protocol=rule.protocol,
            port_first=rule.first_port,
            port_last=rule.last_port,
            sources=shown,
            networks=list(nets)[:MAX_NETWORKS],
            evidence=_evidence(rule),
            created_at=now,
        )
        session.add(row)
        made.append(row)
    await session.flush()
    return Proposed(made, proposal.warning)


def _decided(rule: SegmentRuleRow, status: str, actor: str) -> None:
    rule.status, rule.decided_by, rule.decided_at = status, actor, utcnow()


async def decide(
    session: AsyncSession, asset: SegmentAssetRow, rule_id: int, status: str, actor: str
) -> SegmentRuleRow:
    """Approve or reject a rule; the asset gets a new rules revision when its approved set changes."""
    rule = await find_rule(session, asset, rule_id)
    if rule.status == status:
        raise Unprocessable(f"rule {rule.id} is already {status}")
    if "approved" in (rule.status, status):
        asset.rules_revision += 1
    if status == "approved":
        # resolved again now: what the admin approves is what the groups hold today
        rule.networks = _networks(rule.sources, await known_groups(session, asset))
    _decided(rule, status, actor)
    return rule


async def edit(
    session: AsyncSession, asset: SegmentAssetRow, rule_id: int, body: ss.RuleEdit, actor: str
) -> tuple[dict[str, Any], SegmentRuleRow]:
    """Change a rule's ports or sources; the edited rule is approved. Returns (before, rule)."""
    rule = await find_rule(session, asset, rule_id)
    before = {
        "ports": [rule.port_first, rule.port_last],
        "sources": list(rule.sources),
        "status": rule.status,
    }
    first = rule.port_first if body.port_first is None else body.port_first
    last = (
        body.port_last
        if body.port_last is not None
        else (first if body.port_first is not None else rule.port_last)
    )
    if last < first:
        raise Unprocessable(f"port range {first}-{last} is reversed")
    sources = list(rule.sources) if body.sources is None else list(dict.fromkeys(body.sources))
    rule.networks = _networks(sources, await known_groups(session, asset))
    rule.port_first, rule.port_last, rule.sources = first, last, sources
    _decided(rule, "approved", actor)
    asset.rules_revision += 1
    return before, rule


async def add_rule(
    session: AsyncSession, asset: SegmentAssetRow, body: ss.RuleCreate, actor: str
) -> SegmentRuleRow:
    """A rule the admin writes (an accept, or a drop for learning with blocks), approved at once."""
    sources = list(dict.fromkeys(body.sources))
    rule = SegmentRuleRow(
        asset_id=asset.id,
        action=body.action,
        protocol=body.protocol,
        port_first=body.port_first,
        port_last=body.port_first if body.port_last is None else body.port_last,
        sources=sources,
        networks=_networks(sources, await known_groups(session, asset)),
        created_at=utcnow(),
    )
    _decided(rule, "approved", actor)
    session.add(rule)
    asset.rules_revision += 1
    await session.flush()
    return rule


async def delete_rule(session: AsyncSession, asset: SegmentAssetRow, rule_id: int) -> SegmentRuleRow:
    """Remove a rule (a stale one, say); Unprocessable for the last approved accept of a protected asset."""
    rule = await find_rule(session, asset, rule_id)
    if rule.status == "approved":
        if asset.mode == "protected" and rule.action == "accept":
            others = [
                r
                for r in await rules_of(session, asset)
                if r.id != rule.id and r.status == "approved" and r.action == "accept"
            ]
            if not others:
                raise Unprocessable(
                    f"rule {rule.id} is the last approved rule of protected asset {asset.name}: "
                    "unprotect the asset first"
                )
        asset.rules_revision += 1
    await session.delete(rule)
    return rule


async def simulate(
    session: AsyncSession, asset: SegmentAssetRow, rule_ids: Sequence[int], all_proposed: bool
) -> tuple[list[int], SimulationResult]:
    """The approved accept rules plus the proposed ones named (or all of them),
    replayed against the asset's learned flows."""
    rules = await rules_of(session, asset)
    by_id = {r.id: r for r in rules}
    for wanted in rule_ids:
        if wanted not in by_id:
            raise NotFound(f"asset {asset.name} has no rule with id {shown_id(wanted)}")
    chosen = [
        r
        for r in rules
        if r.action == "accept"
        and (r.status == "approved" or (r.status == "proposed" and (all_proposed or r.id in rule_ids)))
    ]
    result = learning.simulate(await asset_flows(session, asset), [as_proposed(r) for r in chosen])
    return [r.id for r in chosen], result
