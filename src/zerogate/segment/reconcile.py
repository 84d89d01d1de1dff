"""What the segment server does to one asset, and what it then reports.

:func:`decide` is pure: from the asset as the snapshot wants it and the
server's :class:`AssetMemory` of that host (what it did there, at monotonic
time ``now``) it returns the :data:`Step` list to carry out. :func:`execute`
carries the steps out through a :class:`HostOps` backend (the real one runs
:mod:`zerogate.segment.hosts` over SSH; tests inject a fake), updating the
memory; it never raises, so a failing asset never stops the others.
:func:`asset_report` turns the memory into the asset's part of the report.

The decisions:

- no pinned host key: scan it and report ``host_key_unknown`` with the key
  offered (the admin trusts its fingerprint); nothing else is done;
- the host offered another key than the pinned one: ``host_key_changed``, the
  offered key reported, nothing touched until the admin pins a key again;
- first contact, and again every ``preflight_every`` seconds: the preflight;
- monitored: no learning table, no enforcement (unprotect if one may be there);
- learning: the learning table loaded once (the SSH backend then keeps the
  asset's conntrack event stream running, :mod:`zerogate.segment.events`), a
  ``collect`` every ``collect_every`` seconds, the flows kept for the next report
  (bounded, see :data:`FLOW_LIMIT`) with the event stream's loss counters;
- learning_with_blocks / protected: each new ``rules_revision`` enforced once,
  commit-confirmed, after a fresh preflight (sshd's ports, the listeners the check
  probes); a failed check is ``rolled_back``, another error ``failed``, and the
  revision is not tried again (a new revision is). An unreachable host is tried
  again next round. A preflight that says enforcement cannot go ahead holds the
  revision back until a later preflight passes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

from zerogate.deploy.firewall.errors import CheckFailedRolledBack, FirewallApplyError, TargetUnreachable
from zerogate.model.segment import Flow
from zerogate.model.segment_report import (
    MAX_COUNTER,
    MAX_FLOWS_PER_ASSET,
    AssetReport,
    AssetState,
    ObservedFlow,
)
from zerogate.model.snapshot import SegmentAsset
from zerogate.policy.segment import merge
from zerogate.segment.hosts import Collection, Enforcement, ScannedKey
from zerogate.segment.preflight import Preflight
from zerogate.segment.ssh import HostKeyChanged

log = logging.getLogger(__name__)

Step = Literal["scan", "preflight", "stop_learning", "start_learning", "unprotect", "enforce", "collect"]

FLOW_LIMIT = MAX_FLOWS_PER_ASSET  # flows kept per asset between two delivered reports
PREFLIGHT_EVERY = 600.0  # seconds: reachability, the host key and sshd's ports, checked again
RETRY_AFTER = 30.0  # seconds: a host whose last step failed is left alone this long
DETAIL_MAX = 500  # the report's detail field
LINUX_CHECK = "the host offers {}; check it on the host (ssh-keygen -lf)"
# A Windows asset offers its WinRM listener's certificate, not an SSH key: what the admin compares
WINDOWS_CHECK = (
    "the WinRM listener offers a certificate with SHA-256 {}; compare it with the SHA-256 (base64) of "
    "the listener's certificate on the host (PowerShell: [Convert]::ToBase64String([Security."
    "Cryptography.SHA256]::Create().ComputeHash($cert.RawData)), not its SHA-1 thumbprint)"
)

LEARNING_MODES = ("learning", "learning_with_blocks")
ENFORCING_MODES = ("learning_with_blocks", "protected")


class HostOps(Protocol):
    """The SSH operations on one asset (see :mod:`zerogate.segment.hosts`)."""

    def scan_host_key(self, asset: SegmentAsset) -> ScannedKey: ...
    def preflight(self, asset: SegmentAsset) -> Preflight: ...
    def start_learning(self, asset: SegmentAsset) -> None: ...
    def stop_learning(self, asset: SegmentAsset) -> None: ...
    def collect(self, asset: SegmentAsset, outbound: bool) -> Collection: ...
    def enforce(self, asset: SegmentAsset, preflight: Preflight) -> Enforcement: ...
    def unprotect(self, asset: SegmentAsset) -> None: ...
    def retain(self, asset_ids: AbstractSet[int]) -> None:
        """Stop whatever runs in the background for assets not in ``asset_ids``."""


@dataclass
class AssetMemory:
    """What the server knows about one host. ``None`` in ``learning``/``table``: unknown
    (after a start), so the state is made sure of once."""

    pinned: str | None = None  # the pinned key these facts hold for; a new pin starts afresh
    key_changed: bool = False
    preflight: Preflight | None = None
    preflight_at: float | None = None
    learning: bool | None = None  # our learning table is loaded
    table: bool | None = None  # our enforcement table is (or may be) there
    done_revision: int | None = None  # the rules_revision enforced or given up on
    enforced_revision: int | None = None  # the revision in force on the host
    collected_at: float | None = None
    flows: tuple[Flow, ...] = ()  # learned, not yet delivered
    flows_dropped: int = 0
    events_dropped: int = 0  # the event stream's counters (cumulative), as of the last collect
    event_overflows: int = 0
    state: AssetState = "unreachable"
    detail: str = "not contacted yet"
    observed_host_key: str | None = None
    contacted: bool = False
    retry_at: float | None = None  # after a failure: nothing before this time
    steps_done: list[Step] = field(default_factory=list)  # of the last execute (tests, logs)


def remember(memory: AssetMemory | None, asset: SegmentAsset) -> AssetMemory:
    """The memory to decide with: a new one when the pinned key changed (what was
    known about the host under another key no longer holds, except the flows)."""
    if memory is None:
        return AssetMemory(pinned=asset.host_key)
    if memory.pinned != asset.host_key:
        return AssetMemory(
            pinned=asset.host_key,
            flows=memory.flows,
            observed_host_key=memory.observed_host_key,
            state=memory.state,  # so the log says what it changes from
            detail=memory.detail,
        )
    return memory


def _due(at: float | None, every: float, now: float) -> bool:
    return at is None or now - at >= every


def decide(
    asset: SegmentAsset,
    memory: AssetMemory,
    now: float,
    *,
    collect_every: float,
    preflight_every: float = PREFLIGHT_EVERY,
) -> tuple[Step, ...]:
    """The steps that bring the host to what the snapshot wants (pure; see the module)."""
    if memory.key_changed or (memory.retry_at is not None and now < memory.retry_at):
        return ()
    if asset.host_key is None:
        fresh = memory.observed_host_key is not None and not _due(memory.preflight_at, preflight_every, now)
        return () if fresh else ("scan",)
    steps: list[Step] = []
    if _due(memory.preflight_at, preflight_every, now):
        steps.append("preflight")
    learn = asset.mode in LEARNING_MODES
    enforce = asset.mode in ENFORCING_MODES
    if not learn and memory.learning is not False:
        steps.append("stop_learning")
    if not enforce and memory.table is not False:
        steps.append("unprotect")
    if enforce and memory.done_revision != asset.rules_revision:
        held = memory.preflight is not None and not memory.preflight.ok and "preflight" not in steps
        if not held:
            if "preflight" not in steps:
                steps.insert(0, "preflight")  # the check probes what listens now
            steps.append("enforce")
    if learn and memory.learning is not True:
        steps.append("start_learning")
    if learn and _due(memory.collected_at, collect_every, now):
        steps.append("collect")
    return tuple(steps)


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:DETAIL_MAX]


def _settle(asset: SegmentAsset, memory: AssetMemory) -> tuple[AssetState, str]:
    """The state after every step went through."""
    if asset.mode in ENFORCING_MODES:
        if memory.table and memory.enforced_revision == asset.rules_revision:
            return "enforced", f"revision {asset.rules_revision} in force"
        if memory.done_revision == asset.rules_revision and memory.table is not False:
            return memory.state, memory.detail  # failed / rolled_back: kept until a new revision
    if asset.mode in LEARNING_MODES:
        return "learning", f"{len(memory.flows)} flow(s) learned since the last report"
    return "ready", ""


def _set(asset: SegmentAsset, memory: AssetMemory, state: AssetState, detail: str) -> None:
    if state != memory.state:
        log.info(
            "asset %s: %s -> %s%s",
            asset.name,
            memory.state,
            state,
            f" ({detail})" if detail else "",
            extra={"component": "segment", "asset": asset.name, "revision": asset.rules_revision},
        )
    memory.state, memory.detail = state, detail[:DETAIL_MAX]


def _key_changed(asset: SegmentAsset, memory: AssetMemory, ops: HostOps, exc: HostKeyChanged) -> None:
    memory.key_changed = True
    try:
        memory.observed_host_key = ops.scan_host_key(asset).key
    except Exception as scan_exc:  # the change is what matters; the key is a bonus
        log.debug("asset %s: cannot scan the offered key: %s", asset.name, scan_exc)
    _set(asset, memory, "host_key_changed", f"{_text(exc)}; management stopped until a key is trusted")


def execute(
    asset: SegmentAsset,
    memory: AssetMemory,
    steps: Sequence[Step],
    ops: HostOps,
    now: float,
    *,
    outbound: bool = False,
    retry_after: float = RETRY_AFTER,
    flows_guard: AbstractContextManager[object] | None = None,
) -> AssetMemory:
    """Carry ``steps`` out on the host, in order, updating ``memory``; stops at the
    first error (reported in the memory's state). Never raises.

    ``flows_guard`` is held while the learned flows are updated: the daemon's
    reports take them out of the memory from another thread."""
    memory.steps_done, memory.retry_at = [], None
    for step in steps:
        try:
            if not _step(asset, memory, step, ops, now, outbound, flows_guard or nullcontext()):
                memory.retry_at = now + retry_after
                return memory
        except HostKeyChanged as exc:
            _key_changed(asset, memory, ops, exc)
            memory.retry_at = now + retry_after
            return memory
        except CheckFailedRolledBack as exc:  # before TargetUnreachable: the host restored itself
            memory.done_revision, memory.table = asset.rules_revision, None
            _set(asset, memory, "rolled_back", f"revision {asset.rules_revision}: {_text(exc)}")
            memory.retry_at = now + retry_after
            return memory
        except TargetUnreachable as exc:
            _set(asset, memory, "unreachable", _text(exc))
            memory.retry_at = now + retry_after
            return memory
        except (FirewallApplyError, ValueError, OSError) as exc:
            if step == "enforce":
                memory.done_revision, memory.table = asset.rules_revision, None
            _set(asset, memory, "failed", f"{step.replace('_', ' ')}: {_text(exc)}")
            memory.retry_at = now + retry_after
            return memory
        except Exception as exc:  # a bug must not stop the other assets
            log.exception("asset %s: %s failed unexpectedly", asset.name, step)
            _set(asset, memory, "failed", f"{step.replace('_', ' ')}: {_text(exc)}")
            memory.retry_at = now + retry_after
            return memory
        memory.steps_done.append(step)
    if steps and asset.host_key is not None:
        state, detail = _settle(asset, memory)
        _set(asset, memory, state, detail)
    return memory


def _step(
    asset: SegmentAsset,
    memory: AssetMemory,
    step: Step,
    ops: HostOps,
    now: float,
    outbound: bool,
    flows_guard: AbstractContextManager[object],
) -> bool:
    """One step; False stops the steps (the state says why)."""
    if step == "scan":
        scanned = ops.scan_host_key(asset)
        memory.observed_host_key, memory.preflight_at = scanned.key, now
        check = WINDOWS_CHECK if asset.os == "windows" else LINUX_CHECK
        _set(
            asset,
            memory,
            "host_key_unknown",
            f"{check.format(scanned.fingerprint)} and trust it: "
            f"zerogate admin segment asset trust {asset.name} {scanned.fingerprint}",
        )
    elif step == "preflight":
        pf = ops.preflight(asset)
        memory.preflight, memory.preflight_at, memory.contacted = pf, now, True
        if not pf.ok and asset.mode in ENFORCING_MODES and memory.done_revision != asset.rules_revision:
            failing = ", ".join(f"{i.name}: {i.detail}" for i in pf.items if not i.ok)
            _set(
                asset,
                memory,
                "failed",
                f"preflight: {failing}; fix it, enforcement waits for a passing preflight",
            )
            return False
    elif step == "stop_learning":
        ops.stop_learning(asset)
        memory.learning = False
    elif step == "start_learning":
        ops.start_learning(asset)
        memory.learning = True
    elif step == "unprotect":
        ops.unprotect(asset)
        memory.table, memory.enforced_revision, memory.done_revision = False, None, None
    elif step == "enforce":
        assert memory.preflight is not None  # decide() puts a preflight first
        result = ops.enforce(asset, memory.preflight)
        memory.done_revision = asset.rules_revision
        memory.table = result.outcome != "removed"
        memory.enforced_revision = asset.rules_revision if memory.table else None
    elif step == "collect":
        got = ops.collect(asset, outbound)
        with flows_guard:
            merged = merge(memory.flows, got.flows, limit=FLOW_LIMIT)
            memory.flows, memory.collected_at = merged.flows, now
            memory.events_dropped, memory.event_overflows = got.events_dropped, got.event_overflows
        if merged.dropped:
            memory.flows_dropped += merged.dropped
            log.warning(
                "asset %s: %d new flow(s) dropped: %d flows wait for the controller",
                asset.name,
                merged.dropped,
                FLOW_LIMIT,
            )
    return True


def asset_report(asset: SegmentAsset, memory: AssetMemory, flows: Sequence[Flow] = ()) -> AssetReport:
    """The asset's part of a report, with ``flows`` (taken from the memory by the caller)."""
    pf = memory.preflight
    return AssetReport(
        asset_id=asset.asset_id,
        state=memory.state,
        detail=memory.detail,
        observed_host_key=memory.observed_host_key,
        preflight=pf.items[:64] if pf else (),
        ssh_ports=pf.ssh_ports[:16] if pf else (),
        flows=tuple(ObservedFlow.of(f) for f in flows),
        enforced_revision=memory.enforced_revision,
        events_dropped=min(memory.events_dropped, MAX_COUNTER),
        event_overflows=min(memory.event_overflows, MAX_COUNTER),
    )
