"""Operations on one segment asset over SSH: onboarding scan, preflight, learning,
collection, commit-confirmed enforcement and unprotect.

Each function takes the asset (from the controller's snapshot) and the server's
:class:`~zerogate.segment.ssh.Access`, opens the SSH sessions it needs (each one
``ssh`` run, host key pinned) and returns a value or raises; nothing here keeps
state between calls except the engine's per-asset state directory, so a daemon can
call them per asset from a bounded pool of threads.

:func:`enforce` is the firewall engine's commit-confirm
(:func:`zerogate.deploy.firewall.commit.apply_ruleset`) against an
:class:`~zerogate.segment.ssh.AssetTarget`: the table is validated and the current
state of ``inet zerogate_segment`` saved on the host, the rollback armed *on the
host*, the table loaded atomically, then :class:`~zerogate.segment.checks.AssetCheck`
runs over fresh connections; only when it passes is the rollback disarmed. A
failed check restores at once; a server that dies mid-way leaves the host to roll
itself back at the deadline.

Errors: :class:`SegmentHostError` (a ``FirewallApplyError``) for onboarding and
collection failures, plus the SSH and engine errors of :mod:`zerogate.segment.ssh`
and :mod:`zerogate.deploy.firewall.errors` (``CheckFailedRolledBack``,
``RollbackLeftToTarget``, ``ManagementCheckError`` ...).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from zerogate.deploy.firewall.commit import apply_ruleset
from zerogate.deploy.firewall.errors import FirewallApplyError, ManagementCheckError, StateLockedError
from zerogate.deploy.firewall.state import Outcome, StateStore
from zerogate.model.segment import Address, Flow, Listener
from zerogate.model.snapshot import SegmentAsset
from zerogate.netops.command import CommandError, run
from zerogate.netops.conntrack import LEARNING_TABLE, learning_table, parse_entries
from zerogate.netops.ss import parse_listeners
from zerogate.policy.segment import derive_flows, merge
from zerogate.segment.checks import AssetCheck, probed_ports
from zerogate.segment.events import EventLedger, flows_of
from zerogate.segment.plan import TABLE, removal_script, render_asset_table
from zerogate.segment.preflight import PREFLIGHT_SCRIPT, Preflight, parse_preflight, sections
from zerogate.segment.ssh import CONNTRACK, NFT, SS, Access, AssetTarget

CHECK_TIMEOUT = 10.0  # the fresh login and service connects, under load from many concurrent applies
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")

# $1 1 = through sudo -n, $2 conntrack, $3 ss. One session: connections, listeners, addresses.
_COLLECT_SCRIPT = r"""
z=$1 ct=$2 ss=$3
PATH="$PATH:/usr/sbin:/sbin"
priv() { if [ "$z" = 1 ]; then sudo -n "$@"; else "$@"; fi; }
echo @conntrack; priv "$ct" -L -o extended 2>/dev/null; echo "@rc $?"
echo @ss; priv "$ss" -H -tuln -p 2>/dev/null; echo "@rc $?"
echo @addr; ip -o addr show 2>/dev/null; echo "@rc $?"
"""


class SegmentHostError(FirewallApplyError):
    """An asset operation failed; the message names the asset and what to do."""


@dataclass(frozen=True)
class ScannedKey:
    """What an asset offered at onboarding: ``key`` as pinned (``type base64``) and its fingerprint."""

    key: str
    fingerprint: str  # "SHA256:...", as ssh-keygen -lf prints it


@dataclass(frozen=True)
class Collection:
    """One observation of an asset: its flows (one record per flow key), listeners,
    addresses and the lines the parsers could not read; with an event stream, its
    counters so far (see :class:`~zerogate.segment.events.EventLedger`)."""

    flows: tuple[Flow, ...]
    listeners: tuple[Listener, ...]
    addresses: tuple[Address, ...]
    skipped: int = 0
    events_dropped: int = 0
    event_overflows: int = 0


@dataclass(frozen=True)
class Enforcement:
    """How an enforcement ended: ``applied`` (check passed, rollback disarmed) or ``removed``."""

    asset_id: int
    revision: int
    outcome: str
    detail: str


def _sudo_flag(target: AssetTarget) -> str:
    return "1" if target.sudo else "0"


# --------------------------------------------------------------------------- onboarding


def scan_host_key(asset: SegmentAsset, timeout: int = 5) -> ScannedKey:
    """The host key the asset offers (ed25519 preferred), for the admin to trust (``ssh-keyscan``)."""
    argv = ["ssh-keyscan", "-T", str(timeout), "-p", str(asset.ssh_port), "-t", "ed25519,ecdsa,rsa",
            "--", str(asset.address)]  # fmt: skip
    try:
        out = run(argv, timeout=timeout + 5, check=False).stdout
    except CommandError as exc:
        raise SegmentHostError(f"asset {asset.name}: cannot run ssh-keyscan: {exc.stderr}") from None
    offered = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 3 and not line.startswith("#") and words[1] in KEY_TYPES:
            offered[words[1]] = f"{words[1]} {words[2]}"
    key = next((offered[t] for t in KEY_TYPES if t in offered), None)
    if key is None:
        raise SegmentHostError(
            f"asset {asset.name}: no SSH host key from {asset.address}:{asset.ssh_port} within {timeout} s; "
            "check the address, the port and that sshd runs"
        )
    try:
        printed = run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=f"{asset.address} {key}\n"
        ).stdout
    except CommandError as exc:
        raise SegmentHostError(f"asset {asset.name}: ssh-keygen cannot read the key: {exc.stderr}") from None
    fingerprint = next((w for w in printed.split() if w.startswith("SHA256:")), "")
    if not fingerprint:
        raise SegmentHostError(f"asset {asset.name}: no fingerprint from ssh-keygen ({printed.strip()!r})")
    return ScannedKey(key, fingerprint)


def preflight(asset: SegmentAsset, access: Access) -> Preflight:
    """Run the preflight on the asset (one SSH session); see :mod:`zerogate.segment.preflight`."""
    with AssetTarget(asset, access) as target:
        argv = ["sh", "-c", PREFLIGHT_SCRIPT, "zerogate-preflight", _sudo_flag(target), NFT, CONNTRACK, SS]
        out = target.run(argv)
    if out.returncode != 0:
        raise SegmentHostError(f"preflight on {target.name} failed: {out.stderr.strip()[-200:]}")
    return parse_preflight(out.stdout, asset.ssh_port)


# --------------------------------------------------------------------------- learning


def start_learning(asset: SegmentAsset, access: Access) -> None:
    """Load ``inet zerogate_learn`` so conntrack tracks in the asset's namespace (changes no verdict)."""
    with AssetTarget(asset, access) as target:
        target.checked([NFT, "-f", "-"], "loading the learning table", learning_table())


def stop_learning(asset: SegmentAsset, access: Access) -> None:
    """Remove ``inet zerogate_learn`` (idempotent)."""
    script = f"table inet {LEARNING_TABLE} {{}}\ndelete table inet {LEARNING_TABLE}\n"
    with AssetTarget(asset, access) as target:
        target.checked([NFT, "-f", "-"], "removing the learning table", script)


def parse_addresses(text: str) -> tuple[Address, ...]:
    """Local addresses from ``ip -o addr show`` (``inet A/N`` and ``inet6 A/N`` fields)."""
    found: list[Address] = []
    for line in text.splitlines():
        words = line.split()
        for kind, value in itertools.pairwise(words):
            if kind in ("inet", "inet6"):
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.ip_interface(value).ip)
    return tuple(dict.fromkeys(found))


def collect(
    asset: SegmentAsset,
    access: Access,
    *,
    outbound: bool = False,
    at: datetime | None = None,
    events: EventLedger | None = None,
) -> Collection:
    """One SSH session: ``conntrack -L``, ``ss`` and the asset's addresses, joined into flows;
    with ``events``, the connections its event stream saw since the last collect too,
    each connection counted once (see :mod:`zerogate.segment.events`)."""
    with AssetTarget(asset, access) as target:
        out = target.script(_COLLECT_SCRIPT, [_sudo_flag(target), CONNTRACK, SS], "collecting flows")
    got = sections(out)
    for name in ("conntrack", "ss"):
        if got.get(name, ("", -1))[1] != 0:
            raise SegmentHostError(
                f"collecting on {target.name}: {name} failed (status {got.get(name, ('', -1))[1]}); "
                "run the preflight"
            )
    entries = parse_entries(got["conntrack"][0])
    ss = parse_listeners(got["ss"][0])
    addresses = parse_addresses(got.get("addr", ("", -1))[0]) or (asset.address,)
    at = at or datetime.now(UTC)
    if events is None:
        flows = derive_flows(entries.connections, ss.listeners, addresses, at=at, outbound=outbound)
        dropped = overflows = 0
    else:
        observed = events.take(entries.connections, at)
        flows = flows_of(observed, ss.listeners, addresses, outbound=outbound)
        dropped, overflows = events.dropped, events.overflows
    merged = merge((), flows, limit=max(1, len(flows)))
    skipped = entries.skipped + ss.skipped
    return Collection(merged.flows, ss.listeners, addresses, skipped, dropped, overflows)


# --------------------------------------------------------------------------- enforcement


def _store(target: AssetTarget, access: Access) -> StateStore:
    return StateStore(access.state_dir / "targets" / target.state_key)


def enforce(
    asset: SegmentAsset,
    access: Access,
    servers: Sequence[Address],
    *,
    ssh_ports: Sequence[int] | None = None,
    listeners: Sequence[Listener] | None = None,
    check_timeout: float = CHECK_TIMEOUT,
    lock_wait: float = 30.0,
) -> Enforcement:
    """Bring the asset's table to its snapshot mode and rules, commit-confirmed (see the module).

    ``servers``: the addresses the asset sees the segment server come from. Without
    ``ssh_ports`` and ``listeners`` (from an earlier preflight) the preflight runs first.
    """
    if ssh_ports is None or listeners is None:
        pf = preflight(asset, access)
        if not pf.ssh_ports:
            raise SegmentHostError(
                f"asset {asset.name}: no sshd port found; fix the preflight findings first"
            )
        ssh_ports = pf.ssh_ports if ssh_ports is None else ssh_ports
        listeners = pf.listeners if listeners is None else listeners
    text = render_asset_table(asset, servers, ssh_ports)
    if text is None:
        unprotect(asset, access)
        return Enforcement(asset.asset_id, asset.rules_revision, "removed", f"mode {asset.mode}: no table")
    local = access.state_dir / "rulesets" / f"{asset.asset_id}-{asset.rules_revision}.nft"
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    local.write_text(text)
    with AssetTarget(asset, access) as target:
        check = AssetCheck(target, asset.address, probed_ports(asset, servers, listeners), check_timeout)
        store = _store(target, access)
        try:
            result = apply_ruleset(
                local, store, target, check, None, check_timeout=check_timeout, lock_wait=lock_wait
            )
        except ManagementCheckError as exc:  # the engine's hint names CLI flags; say it for an asset
            detail = str(exc).split("; fix it", 1)[0]
            raise ManagementCheckError(f"{target.name}: {detail}; nothing was enforced") from None
    return Enforcement(asset.asset_id, asset.rules_revision, result.outcome, result.check)


def unprotect(asset: SegmentAsset, access: Access, lock_wait: float = 5.0) -> None:
    """Remove our table (idempotent), first cancelling a rollback still armed from an
    interrupted enforcement (it would bring an old table back)."""
    with AssetTarget(asset, access) as target:
        store = _store(target, access)
        with contextlib.suppress(StateLockedError), store.lock(lock_wait):
            p = store.pending()
            if p is not None:
                target.disarm(p)
                store.clear_pending()
                store.set_last(
                    Outcome(p.id, "rolled back: unprotected", time.time(), p.tables, p.snapshot_file)
                )
        target.checked([NFT, "-f", "-"], f"removing table {TABLE}", removal_script())
