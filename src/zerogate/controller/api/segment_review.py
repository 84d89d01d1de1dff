"""``/v1/segment/assets/{name}/rules``, ``.../propose`` and ``.../simulate``:
review of an asset's rules before (and while) it is protected.

Every decision is an audited mutation naming the rule, its asset and who
decided; a decision that changes what the host enforces gets a new config
revision (the asset's ``rules_revision`` moves with it).
"""

from __future__ import annotations

from fastapi import APIRouter

from zerogate.controller.auth import Admin, State
from zerogate.controller.ids import shown_id
from zerogate.controller.schemas import segment as ss
from zerogate.controller.services import segment_review as review
from zerogate.controller.services.segment import find_asset
from zerogate.controller.state import Mutation
from zerogate.model.segment import Flow, SimulationResult
from zerogate.store.models import SegmentAssetRow, SegmentRuleRow

router = APIRouter(prefix="/v1/segment", tags=["segment"])


def rule_out(asset: SegmentAssetRow, r: SegmentRuleRow, stale: bool = False) -> ss.RuleOut:
    return ss.RuleOut(
        id=r.id,
        asset=asset.name,
        status=r.status,
        action=r.action,
        protocol=r.protocol,
        port_first=r.port_first,
        port_last=r.port_last,
        sources=r.sources,
        networks=r.networks,
        evidence=r.evidence,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        stale=stale,
        created_at=r.created_at,
    )


def flow_out(f: Flow) -> ss.FlowOut:
    return ss.FlowOut(
        direction=f.direction,
        protocol=f.protocol,
        port=f.port,
        peer=str(f.peer),
        process=f.process,
        first_seen=f.first_seen,
        last_seen=f.last_seen,
        count=f.count,
    )


def _describe(r: SegmentRuleRow) -> dict[str, object]:
    return {
        "rule": r.id,
        "status": r.status,
        "action": r.action,
        "protocol": r.protocol,
        "ports": [r.port_first, r.port_last],
        "sources": list(r.sources),
    }


async def _asset(m: Mutation, name: str, rule_id: int | None = None) -> SegmentAssetRow:
    asset = await find_asset(m.tx.session, name)
    m.object_id, m.details = asset.id, {"asset": asset.name}
    if rule_id is not None:
        m.details["rule"] = shown_id(rule_id)
    return asset


@router.get("/assets/{name}/rules", response_model=list[ss.RuleOut])
async def list_rules(name: str, admin: Admin, state: State) -> list[ss.RuleOut]:
    """The asset's rules; approved ones no flow used since the last learning window began are ``stale``."""
    async with state.db.read() as session:
        asset = await find_asset(session, name)
        rules = await review.rules_of(session, asset)
        stale = review.stale_ids(asset, rules, await review.asset_flows(session, asset))
        return [rule_out(asset, r, r.id in stale) for r in rules]


@router.post("/assets/{name}/propose", response_model=ss.ProposalOut)
async def propose(name: str, admin: Admin, state: State) -> ss.ProposalOut:
    """Replace the open proposals with rules made from the learned flows."""
    async with state.mutation(admin, "segment-propose-rules", "segment-asset") as m:
        asset = await _asset(m, name)
        made = await review.propose_rules(m.tx.session, asset)
        m.details["proposed"] = len(made.rules)
        m.config_change = False  # proposals reach no host
        return ss.ProposalOut(
            asset=asset.name, proposed=[rule_out(asset, r) for r in made.rules], warning=made.warning
        )


@router.post("/assets/{name}/rules", response_model=ss.RuleOut, status_code=201)
async def add_rule(name: str, body: ss.RuleCreate, admin: Admin, state: State) -> ss.RuleOut:
    """Write a rule (approved at once): an accept, or a drop for learning with blocks."""
    async with state.mutation(admin, "segment-add-rule", "segment-rule") as m:
        asset = await _asset(m, name)
        rule = await review.add_rule(m.tx.session, asset, body, admin.actor)
        m.details |= _describe(rule)
        return rule_out(asset, rule)


async def _decide(name: str, rule_id: int, status: str, admin: Admin, state: State) -> ss.RuleOut:
    action = "segment-approve-rule" if status == "approved" else "segment-reject-rule"
    async with state.mutation(admin, action, "segment-rule") as m:
        asset = await _asset(m, name, rule_id)
        before = asset.rules_revision
        rule = await review.decide(m.tx.session, asset, rule_id, status, admin.actor)
        m.details |= _describe(rule)
        m.config_change = asset.rules_revision != before
        return rule_out(asset, rule)


@router.post("/assets/{name}/rules/{rule_id}/approve", response_model=ss.RuleOut)
async def approve(name: str, rule_id: int, admin: Admin, state: State) -> ss.RuleOut:
    return await _decide(name, rule_id, "approved", admin, state)


@router.post("/assets/{name}/rules/{rule_id}/reject", response_model=ss.RuleOut)
async def reject(name: str, rule_id: int, admin: Admin, state: State) -> ss.RuleOut:
    return await _decide(name, rule_id, "rejected", admin, state)


@router.patch("/assets/{name}/rules/{rule_id}", response_model=ss.RuleOut)
async def edit(name: str, rule_id: int, body: ss.RuleEdit, admin: Admin, state: State) -> ss.RuleOut:
    """Change a rule's ports or sources; the edited rule is approved."""
    async with state.mutation(admin, "segment-edit-rule", "segment-rule") as m:
        asset = await _asset(m, name, rule_id)
        before, rule = await review.edit(m.tx.session, asset, rule_id, body, admin.actor)
        m.details |= {"before": before, **_describe(rule)}
        return rule_out(asset, rule)


@router.delete("/assets/{name}/rules/{rule_id}", status_code=204)
async def delete_rule(name: str, rule_id: int, admin: Admin, state: State) -> None:
    """Remove a rule (accept a proposed deletion of a stale rule, say)."""
    async with state.mutation(admin, "segment-delete-rule", "segment-rule") as m:
        asset = await _asset(m, name, rule_id)
        before = asset.rules_revision
        rule = await review.delete_rule(m.tx.session, asset, rule_id)
        m.details |= _describe(rule)
        m.config_change = asset.rules_revision != before


@router.post("/assets/{name}/simulate", response_model=ss.SimulationOut)
async def simulate(name: str, body: ss.SimulateRequest, admin: Admin, state: State) -> ss.SimulationOut:
    """Replay the learned flows against the approved rules plus the proposed ones
    named (or all): per source, allowed or would be blocked. Changes nothing."""
    async with state.db.read() as session:
        asset: SegmentAssetRow = await find_asset(session, name)
        ids, result = await review.simulate(session, asset, body.rule_ids, body.all_proposed)
    return _simulation_out(asset, ids, result)


def _simulation_out(asset: SegmentAssetRow, ids: list[int], result: SimulationResult) -> ss.SimulationOut:
    return ss.SimulationOut(
        asset=asset.name,
        rule_ids=ids,
        sources=[
            ss.SourceVerdictOut(
                peer=str(v.peer),
                allowed=v.allowed,
                allowed_flows=[flow_out(f) for f in v.allowed_flows],
                blocked_flows=[flow_out(f) for f in v.blocked_flows],
            )
            for v in result.sources
        ],
        blocked_sources=len(result.blocked),
    )
